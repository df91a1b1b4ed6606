//! Integration tests against real git servers on loopback, started by the tests themselves.

mod util;

mod cli;
mod durable;
mod feed;
mod files;
mod harness;
mod secrets;
mod transports;
