//! # storectl-storage
//!
//! (Being written: layer store, image store, the Store facade, import, progress.)

pub mod reference;
pub mod registry;
