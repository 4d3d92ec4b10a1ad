//! An OCI distribution (v2) registry client.
