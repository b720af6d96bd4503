//! What `weir run` prints once it is ready: what a newcomer needs to try it and
//! an on-call needs to know where things are. Never a key from a real config:
//! the demo key is shown only for the embedded local default, which ships it.
use crate::config::{BackendKind, ListenerProtocol};
use crate::plan::Plan;
use std::net::SocketAddr;
use std::path::Path;

/// The version and the commit the binary was built from (see build.rs).
pub fn version() -> String {
    concat!(env!("CARGO_PKG_VERSION"), env!("WEIR_BUILD_COMMIT")).to_string()
}

/// The lines of the start-up summary.
pub fn lines(
    plan: &Plan,
    path: Option<&Path>,
    listeners: &[(String, ListenerProtocol, SocketAddr)],
    admin: SocketAddr,
) -> Vec<String> {
    let config = &plan.config;
    let mut out = vec![format!("weir {} is ready", version())];
    out.push(match path {
        Some(p) => format!("  config:  {}", p.display()),
        None => "  config:  the embedded local default (config/weir.yaml; --config FILE for yours)"
            .into(),
    });
    for (name, proto, addr) in listeners {
        out.push(if proto.is_stream() {
            format!("  intake:  {}://{addr} ({name})", proto.as_str())
        } else {
            format!(
                "  intake:  {}://{addr} ({name}): POST /api/v2/logs (Datadog), POST /v1/input (NDJSON)",
                proto.as_str()
            )
        });
    }
    out.push(format!(
        "  admin:   http://{admin}/metrics, /healthz, /readyz, /backends"
    ));
    out.push(format!("  data:    {}", config.data_dir.display()));
    let b = &config.buffer;
    out.push(match b.kind {
        crate::config::BufferKind::Disk => format!(
            "  buffer:  disk, {}/wal/<tenant> (ack {}, sync {}, up to {} per tenant)",
            config.data_dir.display(),
            b.ack.as_str(),
            match b.sync {
                crate::config::SyncSetting::EveryRequest => "every request".to_string(),
                crate::config::SyncSetting::Every(d) =>
                    format!("every {}", humantime::format_duration(d)),
            },
            crate::config::units::format_bytes(b.max_bytes_per_tenant.0),
        ),
        crate::config::BufferKind::Memory => {
            "  buffer:  memory only (a crash loses what is queued)".to_string()
        }
    });
    for t in &plan.tenants {
        let archive = &t.archive;
        let archive = if !archive.enabled {
            "no archive".to_string()
        } else {
            let urls: Vec<String> = t
                .archive_stores
                .iter()
                .map(|s| match &s.store {
                    crate::config::StoreConfig::Local { root } => {
                        root.join(&t.name).display().to_string()
                    }
                    store => store.url(),
                })
                .collect();
            format!("archive {}", urls.join(", then "))
        };
        let backends: Vec<String> = t
            .route
            .iter()
            .flat_map(|tier| &tier.backends)
            .filter_map(|b| config.backend(b))
            .map(|b| match &b.kind {
                BackendKind::File(f) => format!("{} (file {})", b.name, f.path.display()),
                _ => b.name.clone(),
            })
            .collect();
        out.push(format!(
            "  tenant:  {} -> {}; {archive}",
            t.name,
            backends.join(", ")
        ));
    }
    if path.is_none() {
        if let Some((_, _, addr)) = listeners
            .iter()
            .find(|(_, p, _)| *p == ListenerProtocol::Http)
        {
            out.push("  try it:".into());
            out.push(format!(
                "    curl -X POST http://{addr}/api/v2/logs -H 'DD-API-KEY: weir-demo-key' \\\n      -H 'Content-Type: application/json' -d '[{{\"message\":\"hello\",\"service\":\"web\"}}]'"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary of the embedded default, as started from `path` (none: the embedded one).
    fn summary(path: Option<&Path>) -> String {
        let c = Plan::parse(crate::config::EMBEDDED_DEFAULT, "weir.yaml").unwrap();
        let intake = (
            "intake".into(),
            ListenerProtocol::Http,
            "127.0.0.1:8088".parse().unwrap(),
        );
        lines(&c, path, &[intake], "127.0.0.1:8089".parse().unwrap()).join("\n")
    }

    #[test]
    fn the_embedded_default_shows_where_to_send_and_where_it_lands() {
        let text = summary(None);
        for want in [
            "http://127.0.0.1:8088",
            "http://127.0.0.1:8089/metrics",
            "weir-demo-key",
            "weir-data/sink.ndjson",
            "weir-data/archive/demo",
            "embedded local default",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        // A config of one's own never has its keys printed.
        let text = summary(Some(Path::new("weir.yaml")));
        assert!(!text.contains("weir-demo-key"), "{text}");
    }
}
