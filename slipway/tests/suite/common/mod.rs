//! Real parts for the tests, a module per concern: databases, git repositories,
//! registries, `slipway` processes, the HTTP API, the Docker engine, SSE, and moto.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use slipway_engine::store::Store;

mod api;
mod db;
mod docker;
mod engine_double;
mod git;
#[cfg(feature = "aws")]
pub mod moto;
mod private_git;
mod processes;
mod registry;
mod sse;
mod tls;
pub mod webdriver;

pub use api::*;
pub use db::*;
pub use docker::*;
pub use engine_double::*;
pub use git::*;
pub use private_git::*;
pub use processes::*;
pub use registry::*;
pub use sse::*;
pub use tls::*;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
