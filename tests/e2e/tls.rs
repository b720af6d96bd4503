//! HTTPS intake: a CA and server certificate made by the test (rcgen), a
//! client that verifies the chain, ALPN h2 and http/1.1, and a TLS 1.1 client refused.
use crate::harness::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;

pub(crate) struct Pki {
    ca_pem: String,
    pub(crate) dir: tempfile::TempDir,
}

/// A test CA, and a server certificate for localhost/127.0.0.1 signed by it.
pub(crate) fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Weir Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Chain file: leaf then CA.
    std::fs::write(
        dir.path().join("chain.pem"),
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )
    .unwrap();
    std::fs::write(dir.path().join("key.pem"), server_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        dir,
    }
}

fn tls_config(backend: &str, pki: &Pki) -> String {
    let d = pki.dir.path().display();
    config(backend, "", "").replace(
        "    protocol: http\n",
        &format!(
            "    protocol: https\n    tls:\n      cert: {d}/chain.pem\n      key: {d}/key.pem\n"
        ),
    )
}

fn client_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

async fn connect(
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

fn logs_request(port: u16, msg: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{port}/api/v2/logs"))
        .header("DD-API-KEY", "agent-key")
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "[{{\"message\":\"{msg}\"}}]"
        ))))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_verified_chain_over_h2_and_http1() {
    let pki = pki();
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&tls_config(&addr.to_string(), &pki)).await;

    // HTTP/2, negotiated by ALPN.
    let tls = connect(weir.intake, client_config(&pki, &[b"h2", b"http/1.1"]))
        .await
        .expect("chain verifies against the test CA");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(logs_request(weir.intake, "over h2"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "{}");

    // HTTP/1.1.
    let tls = connect(weir.intake, client_config(&pki, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(logs_request(weir.intake, "over http1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    eventually(Duration::from_secs(20), "both events", || {
        (dd.count() == 2).then_some(())
    })
    .await;
}

/// A client that trusts nothing cannot complete the handshake (the chain is really checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusting_client_fails_verification() {
    let pki = pki();
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&tls_config(&addr.to_string(), &pki)).await;
    let other = Pki {
        ca_pem: pki_ca_only(),
        dir: tempfile::tempdir().unwrap(),
    };
    let err = connect(weir.intake, client_config(&other, &[]))
        .await
        .expect_err("an unknown CA must not verify");
    assert!(
        err.to_string().contains("UnknownIssuer")
            || err.to_string().to_lowercase().contains("unknown"),
        "{err}"
    );
}

fn pki_ca_only() -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

/// A raw TLS 1.1 ClientHello (no supported_versions extension, legacy version
/// 3.2): the server must answer with a fatal alert, never a ServerHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_client_is_refused() {
    let pki = pki();
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&tls_config(&addr.to_string(), &pki)).await;

    let mut hello = Vec::new();
    hello.extend([0x03, 0x02]); // client_version TLS 1.1
    hello.extend([0x42; 32]); // random
    hello.push(0); // no session id
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035]; // what a TLS 1.1 stack offers: AES-CBC-SHA
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]); // compression: null
    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);

    let port = weir.intake;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&record).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    })
    .await
    .unwrap();
    assert!(
        answer.len() >= 7,
        "expected an alert record, got {answer:?}"
    );
    assert_eq!(
        answer[0], 0x15,
        "an alert record, not a handshake: {answer:?}"
    );
    assert_eq!(answer[5], 2, "fatal");
    // rustls answers handshake_failure (40); protocol_version (70) would do as well.
    assert!([40, 70].contains(&answer[6]), "alert {}", answer[6]);
    // The proxy counts the failure after it has sent the alert and closed: wait for it.
    let mut failures = 0.0;
    for _ in 0..50 {
        let m = weir.metrics().await;
        failures = metric(&m, "weir_tls_handshake_failures_total{listener=\"intake\"}");
        if failures >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failures, 1.0);
}

/// Fluent forward over TLS: a `fluent_forward` listener with a `tls` section,
/// a client verifying the chain, a Forward message with a chunk id acked once
/// its events are in, and the events at the backend with their tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluent_forward_over_tls_is_acked_and_delivered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = pki();
    let (dd, addr) = FakeDatadog::start().await;
    let d = pki.dir.path().display();
    let cfg = config(&addr.to_string(), "", "").replace(
        "    protocol: http\n",
        &format!(
            "    protocol: fluent_forward\n    tenant: acme\n    tls:\n      cert: {d}/chain.pem\n      key: {d}/key.pem\n"
        ),
    );
    let weir = Weir::start(&cfg).await;
    let mut tls = connect(weir.intake, client_config(&pki, &[]))
        .await
        .expect("chain verifies against the test CA");
    let record = |m: &str| rmpv::Value::Map(vec![(rmpv::Value::from("log"), rmpv::Value::from(m))]);
    let message = rmpv::Value::Array(vec![
        rmpv::Value::from("fb.secure"),
        rmpv::Value::Array(vec![
            rmpv::Value::Array(vec![rmpv::Value::from(1_700_000_000u64), record("tls one")]),
            rmpv::Value::Array(vec![rmpv::Value::from(1_700_000_001u64), record("tls two")]),
        ]),
        rmpv::Value::Map(vec![(
            rmpv::Value::from("chunk"),
            rmpv::Value::from("c-tls"),
        )]),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &message).unwrap();
    tls.write_all(&bytes).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut answer))
        .await
        .expect("an ack in time")
        .unwrap();
    let ack = rmpv::decode::read_value(&mut &answer[..n]).unwrap();
    assert_eq!(ack["ack"].as_str(), Some("c-tls"));
    let got = eventually(Duration::from_secs(10), "2 forward events", || {
        (dd.count() >= 2).then(|| dd.take())
    })
    .await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["message"], "tls one");
    assert_eq!(got[0]["fluent_tag"], "fb.secure");
    assert_eq!(got[0]["timestamp"], 1_700_000_000_000i64);
}
