//! Tests against a real registry (see below).
