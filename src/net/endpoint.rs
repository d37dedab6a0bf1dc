//! Building the node's iroh endpoint for a network mode.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use iroh::endpoint::{PortmapperConfig, presets};
use iroh::{Endpoint, RelayMap, RelayMode, RelayUrl, SecretKey};

use super::wire::ALPN;

/// Where the node may look for peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// iroh's public relays and DNS discovery, plus direct addresses.
    Internet,
    /// Direct addresses only, on every local interface: no relay, no global discovery.
    Lan,
    /// 127.0.0.1 only, no relay, no discovery, no port mapping: tests and benchmarks.
    Loopback,
}

/// How long binding may take before we give up (binding never needs the internet).
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the endpoint. `port` is tried first (so saved peer addresses stay valid across
/// restarts), then any free port.
pub async fn bind(
    mode: NetworkMode,
    relay: Option<&RelayUrl>,
    key: SecretKey,
    port: Option<u16>,
) -> Result<Endpoint> {
    let mut last_err = None;
    for port in [port, Some(0)].into_iter().flatten() {
        match tokio::time::timeout(BIND_TIMEOUT, bind_on(mode, relay, key.clone(), port)).await {
            Ok(Ok(ep)) => return Ok(ep),
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => last_err = Some(anyhow::anyhow!("binding the endpoint timed out")),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no port to bind")))
}

async fn bind_on(mode: NetworkMode, relay: Option<&RelayUrl>, key: SecretKey, port: u16) -> Result<Endpoint> {
    let builder = match mode {
        NetworkMode::Internet => Endpoint::builder(presets::N0),
        NetworkMode::Lan | NetworkMode::Loopback => Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled),
    };
    let mut builder = builder.secret_key(key).alpns(vec![ALPN.to_vec()]);
    builder = match mode {
        NetworkMode::Loopback => builder
            .clear_ip_transports()
            .bind_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            .context("loopback address")?,
        _ if port != 0 => {
            builder.bind_addr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).context("bind address")?
        }
        _ => builder,
    };
    if let Some(url) = relay {
        builder = builder.relay_mode(RelayMode::Custom(RelayMap::from(url.clone())));
    }
    Ok(builder.bind().await?)
}
