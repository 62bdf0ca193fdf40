//! pinhole integration test support.
