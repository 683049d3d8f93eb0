"""HTTP parts shared by every service: app factory, auth, errors, metrics, body limits."""
