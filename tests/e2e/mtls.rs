//! Mutual TLS on a listener: client certificates checked against the
//! listener's CA bundle (none, another CA's and an expired one refused), a
//! certificate's name mapped to its tenant, and the server certificate and
//! CA rotated on disk and picked up without a restart while a long-lived
//! connection stays up. The PKI is made by the test (rcgen).
use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

/// A test CA that signs server and client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate and its key (PEM), signed by `ca`, for `names` (SAN DNS
/// names) with `cn` as subject; `expired` puts its validity in the past.
fn leaf(ca: &Ca, names: &[&str], cn: &str, client: bool, expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes the listener's files: server chain and key signed by `server_ca`, client CA bundle.
fn write_server_files(dir: &Path, server_ca: &Ca, client_ca: &Ca) {
    let (cert, key) = leaf(server_ca, &["localhost"], "localhost", false, false);
    // Written to a temporary name and renamed, as cert-manager and Kubernetes do.
    let put = |name: &str, text: String| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, dir.join(name)).unwrap();
    };
    put("clients.pem", client_ca.pem.clone());
    put("key.pem", key);
    put("chain.pem", format!("{cert}{}", server_ca.pem));
}

fn mtls_config(backend: &str, dir: &Path, extra_tls: &str) -> String {
    let d = dir.display();
    config(backend, "", "").replace(
        "    protocol: http\n",
        &format!(
            "    protocol: https\n    tls:\n      cert: {d}/chain.pem\n      key: {d}/key.pem\n      client_ca: {d}/clients.pem\n{extra_tls}"
        ),
    )
}

/// A client trusting `server_ca`, presenting `cert` (PEM cert and key) if given.
fn client(server_ca: &Ca, cert: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut c = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 keep-alive connection over TLS; `Err` when the handshake (or
/// the server's verdict on the client certificate, which TLS 1.3 sends after
/// the handshake) refuses it.
async fn open(port: u16, cfg: Arc<rustls::ClientConfig>) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// Posts one event on `send`; the status, or the error that ended the connection.
async fn post_on(send: &mut Sender, key: Option<&str>, msg: &str) -> Result<u16, String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/api/v2/logs")
        .header("Host", "localhost")
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("DD-API-KEY", k);
    }
    let req = req
        .body(Full::new(Bytes::from(format!(
            "[{{\"message\":\"{msg}\"}}]"
        ))))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// Opens a connection and posts one event on it: what a client gets.
async fn try_post(
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    key: Option<&str>,
) -> Result<u16, String> {
    let mut send = open(port, cfg).await?;
    post_on(&mut send, key, "probe").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_and_ca_are_picked_up_while_a_long_lived_connection_stays_up()
{
    let files = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (ca("Old CA"), ca("New CA"));
    write_server_files(files.path(), &old_ca, &old_ca);
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&mtls_config(&addr.to_string(), files.path(), "")).await;
    let old_client = leaf(&old_ca, &["agent.acme.example"], "agent", true, false);
    let new_client = leaf(&new_ca, &["agent.acme.example"], "agent", true, false);

    let mut long_lived = open(weir.intake, client(&old_ca, Some(&old_client)))
        .await
        .expect("the old CA's client is let in");
    assert_eq!(
        post_on(&mut long_lived, Some("agent-key"), "before").await,
        Ok(202)
    );

    // Rotation: a server certificate from the new CA, and only the new CA for clients.
    write_server_files(files.path(), &new_ca, &new_ca);
    weir.metrics_once(
        "weir_tls_reloads_total{listener=\"intake\",outcome=\"ok\"}",
        1.0,
    )
    .await;

    // New connections get the new certificate and CA.
    let refused = try_post(
        weir.intake,
        client(&old_ca, Some(&old_client)),
        Some("agent-key"),
    )
    .await;
    assert!(
        refused.is_err(),
        "the old server certificate is gone: {refused:?}"
    );
    let refused = try_post(
        weir.intake,
        client(&new_ca, Some(&old_client)),
        Some("agent-key"),
    )
    .await;
    assert!(
        refused.is_err(),
        "the old CA's client is refused now: {refused:?}"
    );
    assert_eq!(
        try_post(
            weir.intake,
            client(&new_ca, Some(&new_client)),
            Some("agent-key")
        )
        .await,
        Ok(202)
    );
    // The connection opened before the rotation is still up, on its own session.
    assert_eq!(
        post_on(&mut long_lived, Some("agent-key"), "after").await,
        Ok(202)
    );

    // A rotation that does not load (a key that is not PEM) keeps what works.
    std::fs::write(files.path().join("key.pem"), "not a key").unwrap();
    weir.metrics_once(
        "weir_tls_reloads_total{listener=\"intake\",outcome=\"error\"}",
        1.0,
    )
    .await;
    assert_eq!(
        try_post(
            weir.intake,
            client(&new_ca, Some(&new_client)),
            Some("agent-key")
        )
        .await,
        Ok(202)
    );
    eventually(
        Duration::from_secs(20),
        "every accepted event delivered",
        || (dd.count() >= 4).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_checked_and_a_certificate_names_its_tenant() {
    let files = tempfile::tempdir().unwrap();
    let (ca_a, other_ca) = (ca("Fleet CA"), ca("Other CA"));
    write_server_files(files.path(), &ca_a, &ca_a);
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = mtls_config(&addr.to_string(), files.path(), "").replace(
        "    api_keys: [agent-key]\n",
        "    api_keys: [agent-key]\n    client_names: [agent.acme.example]\n",
    );
    let weir = Weir::start(&cfg).await;
    let port = weir.intake;

    let none = try_post(port, client(&ca_a, None), Some("agent-key")).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let foreign = leaf(&other_ca, &["agent.acme.example"], "agent", true, false);
    let r = try_post(port, client(&ca_a, Some(&foreign)), Some("agent-key")).await;
    assert!(r.is_err(), "another CA's certificate: {r:?}");
    let expired = leaf(&ca_a, &["agent.acme.example"], "agent", true, true);
    let r = try_post(port, client(&ca_a, Some(&expired)), Some("agent-key")).await;
    assert!(r.is_err(), "an expired certificate: {r:?}");
    let m = weir
        .metrics_once(
            "weir_tls_handshake_failures_total{listener=\"intake\"}",
            3.0,
        )
        .await;
    assert_eq!(
        metric(&m, "weir_tls_handshake_failures_total{listener=\"intake\"}"),
        3.0
    );

    // The right certificate: its SAN names tenant acme, no key needed.
    let good = leaf(&ca_a, &["agent.acme.example"], "agent", true, false);
    assert_eq!(
        try_post(port, client(&ca_a, Some(&good)), None).await,
        Ok(202)
    );
    // Its subject's common name maps too.
    let by_cn = leaf(&ca_a, &[], "agent.acme.example", true, false);
    assert_eq!(
        try_post(port, client(&ca_a, Some(&by_cn)), None).await,
        Ok(202)
    );
    // A key of another tenant with acme's certificate is refused.
    assert_eq!(
        try_post(port, client(&ca_a, Some(&good)), Some("not-acmes")).await,
        Ok(403)
    );
    // A verified certificate no tenant names: the key decides, as without mTLS.
    let unnamed = leaf(&ca_a, &["someone.example"], "someone", true, false);
    assert_eq!(
        try_post(port, client(&ca_a, Some(&unnamed)), None).await,
        Ok(401)
    );
    assert_eq!(
        try_post(port, client(&ca_a, Some(&unnamed)), Some("agent-key")).await,
        Ok(202)
    );
    let got = eventually(Duration::from_secs(20), "3 events for acme", || {
        (dd.count() >= 3).then(|| dd.take())
    })
    .await;
    assert_eq!(got.len(), 3);
}

/// A backend that requires a client certificate from `client_ca` (mutual TLS),
/// serving `server_ca`'s certificate for localhost: counts the requests it took.
async fn mtls_backend(
    server_ca: &Ca,
    client_ca: &Ca,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    let (cert, key) = leaf(server_ca, &["localhost"], "localhost", false, false);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return; // no or a wrong client certificate
                };
                let svc = hyper::service::service_fn(move |_req| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(202)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, taken)
}

/// Toward a backend: a custom CA to trust (`ca_file`) and a client
/// certificate to present (`client_cert`, `client_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_requiring_a_client_certificate_gets_weirs() {
    let files = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (ca("Backend CA"), ca("Weir client CA"));
    let (port, taken) = mtls_backend(&server_ca, &client_ca).await;
    let (cert, key) = leaf(&client_ca, &["weir.example"], "weir", true, false);
    let d = files.path();
    std::fs::write(d.join("backend-ca.pem"), &server_ca.pem).unwrap();
    std::fs::write(d.join("client.pem"), cert).unwrap();
    std::fs::write(d.join("client.key"), key).unwrap();
    let tls = format!(
        "    ca_file: {0}/backend-ca.pem\n    client_cert: {0}/client.pem\n    client_key: {0}/client.key\n    batch:\n",
        d.display()
    );
    let cfg = config(&format!("localhost:{port}"), "", "")
        .replace("endpoint: http://localhost", "endpoint: https://localhost")
        .replacen("    batch:\n", &tls, 1);
    let weir = Weir::start(&cfg).await;
    let r = crate::harness::post(
        &weir.url("/api/v2/logs"),
        &[("DD-API-KEY", "agent-key")],
        "[{\"message\":\"over mutual TLS\"}]",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    eventually(Duration::from_secs(20), "the batch at the backend", || {
        (taken.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;

    // Without the client certificate the backend refuses the handshake: nothing arrives.
    let without = cfg.replace(
        &format!(
            "    client_cert: {0}/client.pem\n    client_key: {0}/client.key\n",
            d.display()
        ),
        "",
    );
    let before = taken.load(std::sync::atomic::Ordering::SeqCst);
    let weir2 = Weir::start(&without).await;
    let r = crate::harness::post(
        &weir2.url("/api/v2/logs"),
        &[("DD-API-KEY", "agent-key")],
        "[{\"message\":\"no client certificate\"}]",
    )
    .await;
    assert_eq!(r.status, 202);
    weir2
        .metrics_once("weir_backend_retries_total{backend=\"dd\"}", 1.0)
        .await;
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), before);
}
