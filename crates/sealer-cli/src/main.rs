//! The `sealer` command.
fn main() {}
