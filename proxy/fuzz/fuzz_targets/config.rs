//! The YAML config as `weir check`, `weir run` and a reload read it:
//! `${VAR}` expansion, the YAML, then validation (`Config::parse`), then the
//! plan (`Plan::resolve`: exclusion-rule queries compiled, each tenant's route
//! resolved). A plan with plugins reads their files, so a config that names
//! any has its rules compiled alone. The input is the YAML text whole (UTF-8),
//! no selector byte. Checks besides "no panic": an error formats, and the same
//! text resolves to the same plan again, with nothing for a reload to change.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::config::Config;
use weir::plan::{changes, compile_rules, Changes, Plan};

const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A `file:PATH` secret is read from disk: the fuzzer must not pick files of
    // the machine to read (/dev/zero, a FIFO).
    if text.contains("file:") {
        return;
    }
    let config = match Config::parse(text, FILE) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    if config.tenants.iter().any(|t| !t.plugins.is_empty()) {
        let _ = compile_rules(&config.exclusion_rules, "exclusion_rules");
        for (i, t) in config.tenants.iter().enumerate() {
            let _ = compile_rules(&t.exclusion_rules, &format!("tenants[{i}].exclusion_rules"));
        }
        return;
    }
    let plan = match Plan::resolve(config) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let again = Plan::parse(text, FILE).expect("the same text resolves again");
    assert!(plan == again, "the same text resolves to another plan");
    assert_eq!(
        changes(&plan, &again),
        Changes::default(),
        "reloading the same text changes fields"
    );
});
