//! Building the node's iroh endpoint for a network mode.
//!
//! | mode | relays | global lookup (DNS/pkarr) | mDNS on the LAN | port mapping | sockets |
//! |---|---|---|---|---|---|
//! | `internet` | n0's, or `--relay` instead | yes | yes | yes | every interface |
//! | `lan` | none, or `--relay` | no | yes | no | every interface |
//! | `loopback` | none, or `--relay` | no | no | no | 127.0.0.1 |
//!
//! Nothing here waits on the internet: binding is local (and bounded by [`BIND_TIMEOUT`]);
//! relays, DNS and mDNS all work in the background, so an offline machine starts as fast
//! as an online one and still reaches peers on direct addresses.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use iroh::endpoint::{PortmapperConfig, QuicTransportConfig, presets};
use iroh::tls::CaTlsConfig;
use iroh::{Endpoint, RelayMap, RelayMode, RelayUrl, SecretKey};
use iroh_mdns_address_lookup::MdnsAddressLookup;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::{debug, warn};

use super::wire::ALPN;

/// Where the node may look for peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// iroh's public relays and DNS discovery, mDNS on the local network, direct addresses.
    Internet,
    /// Direct addresses on every local interface, found by mDNS: no relay (unless
    /// `--relay`), no global discovery.
    Lan,
    /// 127.0.0.1 only, no relay (unless `--relay`), no discovery, no port mapping: tests
    /// and benchmarks.
    Loopback,
}

/// How long binding may take before we give up (binding never needs the internet).
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// An idle connection is pinged this often: keeps NAT bindings open (they commonly expire
/// after 30 s of silence) and lets a dead path show up as missing acknowledgements.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A connection that hears nothing (not even the acknowledgement of a keep-alive) for
/// this long is closed, and the dialer starts reconnecting. iroh closes a silent direct
/// path sooner (15 s) and falls back to another path (the relay) if there is one; this
/// bound is for the whole connection, and stays above iroh's relay path timeout so a relay
/// reconnecting after a network change does not kill the session.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of the session stream a peer may send ahead of what we have read (QUIC's
/// per-stream flow-control window; iroh's default is 1.25 MB). While the replica is busy
/// the session stops reading, and what the peer sent meanwhile waits in the QUIC stack's
/// reassembly buffer, one piece per run of packets that arrived in order; iroh spreads a
/// connection over several paths, so packets do arrive out of order, and its QUIC aborts
/// the connection past 1,024 pieces ("too many gaps in stream buffer"): with the default
/// window, the joiner of a 100k-file folder lost its session every ~10 s. The pieces are
/// bounded by the window over the packet size: 768 KiB keeps that under 1,024 for packets
/// of 750 bytes and more, and still allows ~7.5 MB/s per 100 ms of round trip.
const STREAM_RECEIVE_WINDOW: u32 = 768 * 1024;

/// The mDNS service name teatime nodes announce themselves under (`_teatime._udp.local`),
/// so they only look at each other, not at every iroh application on the network.
const MDNS_SERVICE: &str = "teatime";

/// A self-hosted relay: its URL, and the certificates to trust for its TLS besides the
/// public roots (a relay with a private CA or a self-signed certificate).
#[derive(Debug, Clone)]
pub struct Relay {
    /// Where it is.
    pub url: RelayUrl,
    /// Extra trust anchors for TLS to it: its HTTPS and its QUIC address discovery (which
    /// always uses TLS, even for an `http://` relay, and is how a node behind a NAT learns
    /// the public address hole punching needs).
    pub ca: Vec<CertificateDer<'static>>,
}

/// Reads the PEM certificates of `--relay-ca`.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Binds the endpoint. `port` is tried first (so saved peer addresses stay valid across
/// restarts), then any free port.
pub async fn bind(
    mode: NetworkMode,
    relay: Option<&Relay>,
    key: SecretKey,
    port: Option<u16>,
) -> Result<Endpoint> {
    let mut last_err = None;
    for port in [port, Some(0)].into_iter().flatten() {
        match tokio::time::timeout(BIND_TIMEOUT, bind_on(mode, relay, key.clone(), port)).await {
            Ok(Ok(ep)) => {
                if mode != NetworkMode::Loopback {
                    add_mdns(&ep);
                }
                return Ok(ep);
            }
            Ok(Err(e)) => {
                debug!(port, "binding failed: {e:#}");
                last_err = Some(e)
            }
            Err(_) => last_err = Some(anyhow::anyhow!("binding the endpoint timed out")),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no port to bind")))
}

/// The QUIC settings every mode uses (iroh's defaults, pinned: reconnection relies on them;
/// and a stream window that keeps a stalled reader's connection alive).
fn transport_config() -> Result<QuicTransportConfig> {
    Ok(QuicTransportConfig::builder()
        .stream_receive_window(STREAM_RECEIVE_WINDOW.into())
        .keep_alive_interval(KEEP_ALIVE)
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().context("idle timeout")?))
        .build())
}

async fn bind_on(mode: NetworkMode, relay: Option<&Relay>, key: SecretKey, port: u16) -> Result<Endpoint> {
    let builder = match mode {
        NetworkMode::Internet => Endpoint::builder(presets::N0),
        NetworkMode::Lan | NetworkMode::Loopback => Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled),
    };
    let mut builder =
        builder.secret_key(key).alpns(vec![ALPN.to_vec()]).transport_config(transport_config()?);
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
    // A self-hosted relay replaces n0's in internet mode, and is the only relay in the others.
    if let Some(relay) = relay {
        builder = builder.relay_mode(RelayMode::Custom(RelayMap::from(relay.url.clone())));
        if !relay.ca.is_empty() {
            builder = builder.ca_tls_config(CaTlsConfig::embedded().with_extra_roots(relay.ca.clone()));
        }
    }
    Ok(builder.bind().await?)
}

/// Announces the endpoint on the local network and looks peers up there. Best effort: a
/// machine without multicast (some containers) still syncs over the other paths.
fn add_mdns(ep: &Endpoint) {
    let lookup = match MdnsAddressLookup::builder().service_name(MDNS_SERVICE).build(ep.id()) {
        Ok(lookup) => lookup,
        Err(e) => {
            warn!(
                "no mDNS on this machine, peers on the local network are found only by their saved addresses: {e:#}"
            );
            return;
        }
    };
    match ep.address_lookup() {
        Ok(services) => services.add(lookup),
        Err(e) => warn!("could not add mDNS lookup: {e:#}"),
    }
}

/// Whether a ticket should wait for a relay before it is printed (so it names the relay).
pub fn uses_relay(mode: NetworkMode, relay: Option<&Relay>) -> bool {
    mode == NetworkMode::Internet || relay.is_some()
}
