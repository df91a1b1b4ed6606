//! Integration tests against real git servers on loopback, started by the tests themselves.

mod util;

mod cache;
mod cli;
mod conformance;
mod durable;
mod failures;
mod feed;
mod files;
mod harness;
mod progress;
mod secrets;
mod transports;
