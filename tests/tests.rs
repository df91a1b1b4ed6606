//! Integration tests against real git servers on loopback, started by the tests themselves.

mod util;

mod cache;
mod cli;
mod config;
mod conformance;
mod durable;
mod events;
mod exec;
mod failures;
mod feed;
mod files;
mod harness;
mod layers;
mod listing;
mod policy_agent;
mod progress;
mod secrets;
mod systemd;
mod transports;
