"""What the pretrain service keeps in and reads from the object store."""
