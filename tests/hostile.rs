//! Hostile input: generated configuration and events that try to break gitfeed's parsing and
//! validation, and servers on loopback that lie in git's wire protocol (garbage pkt-lines,
//! endless or oversized advertisements, hostile ref names, bogus object ids, endless packs)
//! over git:// and smart HTTP.
//!
//! The remote tests measure the whole process's memory, so they take turns; the property tests
//! run beside them and allocate little.

mod util;

#[path = "hostile/props.rs"]
mod props;
#[path = "hostile/remotes.rs"]
mod remotes;
#[path = "hostile/servers.rs"]
mod servers;
#[path = "hostile/wire.rs"]
mod wire;
