//! The exclusion-rule query language (`Query::parse`: what the config, the admin
//! API and `weir query` compile), then the matcher: a query that parses is
//! evaluated against each of the fixed events. The input is the query text
//! whole (UTF-8), no selector byte. Checks besides "no panic": the query keeps
//! its text, and where `NOT (query)` parses too it matches exactly the events
//! the query does not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::rules::query::Query;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let query = match Query::parse(text) {
        Ok(q) => q,
        Err(e) => {
            // An error names a position within the query (a character offset).
            assert!(
                e.position <= text.chars().count(),
                "error position {} past the end of a {}-character query: {e}",
                e.position,
                text.chars().count()
            );
            return;
        }
    };
    assert_eq!(query.as_str(), text);
    let negated = Query::parse(&format!("NOT ({text})")).ok();
    for (i, ev) in weir_fuzz::events().iter().enumerate() {
        let matched = query.matches(ev);
        if let Some(n) = &negated {
            assert_ne!(
                n.matches(ev),
                matched,
                "event {i}: `NOT ({text})` and `{text}` agree"
            );
        }
    }
});
