//! The voronka binary.
fn main() {}
