//! What more than one test file uses, by kind. Test files import from here, never from each
//! other.

pub mod access;
pub mod app;
pub mod process;
pub mod providers;
pub mod sockets;
pub mod webhooks;
