"""Image intake and rendering shared by every service: bytes in, checked uint8 arrays out."""
