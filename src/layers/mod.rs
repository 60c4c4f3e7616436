//! The tower middleware between the typed client and HTTP, one concern per file. They are
//! assembled in one place, [`crate::upstream::stack`].

pub mod auth;
pub mod quota;
pub mod trace;
