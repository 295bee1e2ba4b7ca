//! Shared support for integration tests. Include it from a test file with `mod support;`.
//! Each test crate uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod cli;
pub mod lab;
