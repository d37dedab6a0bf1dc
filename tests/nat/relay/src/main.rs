//! The relay of `tests/nat/run.sh`: an iroh relay (the `iroh-relay` crate's server, at the
//! version teatime's iroh uses) serving relaying over plain HTTP, like `iroh-relay --dev`,
//! plus QUIC address discovery (QAD), which needs TLS: a throwaway CA is made at start,
//! signs a certificate for the relay's IP address, and is written out for the peers to
//! trust (`teatime --relay-ca`).
//!
//! ```text
//! teatime-nat-relay IP HTTP_PORT QUIC_PORT CA_PEM_OUT
//! ```
//!
//! Prints `ready` once both servers listen; stops on SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use iroh_relay::server::{QuicConfig, RelayConfig, Server, ServerConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn usage() -> ! {
    eprintln!("usage: teatime-nat-relay IP HTTP_PORT QUIC_PORT CA_PEM_OUT");
    std::process::exit(2)
}

/// A CA (written to `ca_out`) and a TLS server config whose certificate it signed for `ip`.
fn tls_for(ip: IpAddr, ca_out: &str) -> Result<rustls::ServerConfig, Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "teatime NAT test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    std::fs::write(ca_out, ca.pem())?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![ip.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, ip.to_string());
    let cert = params.signed_by(&key, &ca)?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ip, http_port, quic_port, ca_out] = &args[..] else { usage() };
    let ip: IpAddr = ip.parse().unwrap_or_else(|_| usage());
    let http_port: u16 = http_port.parse().unwrap_or_else(|_| usage());
    let quic_port: u16 = quic_port.parse().unwrap_or_else(|_| usage());
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut quic = QuicConfig::new(SocketAddr::new(ip, quic_port));
    quic.server_config = Some(tls_for(ip, ca_out)?);
    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(SocketAddr::new(ip, http_port)));
    config.quic = Some(quic);
    config.metrics_addr = None;

    let mut server = Server::spawn(config).await?;
    println!(
        "ready http={} quic={}",
        server.http_addr().map_or("-".into(), |a| a.to_string()),
        server.quic_addr().map_or("-".into(), |a| a.to_string())
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        res = server.join() => return Err(format!("relay stopped: {res:?}").into()),
    }
    server.shutdown().await?;
    Ok(())
}
