//! The `flotilla` operator CLI.
