//! # storectl-remote — read-only sharing across hosts
//!
//! (Filled in by the sharing work: RO/ placement, the refresher, store events.)
