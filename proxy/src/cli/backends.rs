//! `weir backends`: each backend's health, from a running proxy's admin listener.

#[derive(clap::Args)]
pub struct Args {
    /// The admin listener's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8089")]
    admin: String,
    /// Print the JSON as the proxy answered it.
    #[arg(long)]
    json: bool,
}

/// Fetches `<admin>/backends` and prints it as a table (or as JSON).
pub fn run(args: Args) -> Result<(), String> {
    use http_body_util::BodyExt;
    let admin = &args.admin;
    let url: http::Uri = format!("{}/backends", admin.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("--admin {admin:?}: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.get(url.clone()))
                .await
                .map_err(|_| format!("{url}: no answer within 10s"))?
                .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    })?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    let rows = v["backends"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<24} {:<8} {:>8} {:>9} {:>10} {:>9}  {:<25}  LAST ERROR",
        "BACKEND", "STATE", "EJECTED", "FAILURES", "EJECTIONS", "FAILOVERS", "LAST CHANGE"
    );
    for r in rows {
        let ejected = r["ejected_for_s"]
            .as_u64()
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<8} {:>8} {:>9} {:>10} {:>9}  {:<25}  {}",
            r["backend"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            ejected,
            r["consecutive_failures"],
            r["ejections"],
            r["failovers_away"],
            r["last_change"].as_str().unwrap_or(""),
            r["last_error"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
