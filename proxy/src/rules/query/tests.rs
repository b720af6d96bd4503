use super::*;
use serde_json::json;

/// A busy event: every reserved attribute, tags, and nested attributes.
fn busy() -> Event {
    let attributes = json!({
        "http": { "status_code": 503, "method": "GET", "url": "/api/v1/users" },
        "duration": 250,
        "ratio": 0.5,
        "code": "600",
        "big": 12345678901234567890u64,
        "user": { "name": "Alice", "roles": ["admin", "dev"] },
        "items": [{ "id": 1 }, { "id": 7 }],
        "ok": false,
        "nothing": null,
        "db.statement": "SELECT 1",
        "path": "hello:world",
        "spaced": "hello world",
        "delta": -5,
        "Env": "Staging",
        "empty": "",
    });
    Event {
        timestamp: 0,
        message: "GET /api/v1/users failed: Connection refused (ConnectTimeoutError) user=AliceMartin after 250ms [ERROR]".into(),
        host: Some("web-1".into()),
        service: Some("Checkout-API".into()),
        source: Some("nginx".into()),
        status: Some("error".into()),
        tags: vec!["env:prod".into(), "team:Payments".into(), "canary".into(), "region:eu:west".into()],
        attributes: attributes.as_object().unwrap().clone(),
    }
}

/// A bare event: a message and nothing else.
fn bare() -> Event {
    Event::from_message("hello world".into(), 0)
}

/// Query, event, expected verdict.
type Case = (&'static str, fn() -> Event, bool);

#[test]
fn matches_table() {
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // match-all
        ("*", busy, true),
        ("*", bare, true),
        ("  *  ", bare, true),
        // bare words: message, case-insensitive, whole tokens
        ("refused", busy, true),
        ("REFUSED", busy, true),
        ("refuse", busy, false),
        ("error", busy, true),                       // "[ERROR]"
        ("errors", busy, false),
        ("connection refused", busy, true),          // implicit AND
        ("connection nonsense", busy, false),
        ("and", bare, false),                        // lower-case `and` is a word
        ("hello and", bare, false),
        ("nginx", busy, false),                      // bare words never look at fields
        // phrases: consecutive tokens, punctuation-insensitive
        ("\"connection refused\"", busy, true),
        ("\"Connection Refused\"", busy, true),
        ("\"refused connection\"", busy, false),
        ("\"api v1 users\"", busy, true),
        ("\"GET /api/v1\"", busy, true),
        ("\"hello, world\"", bare, true),
        ("\"=>\"", bare, false),                     // no word chars: substring
        ("\"o w\"", bare, false),
        // wildcards in full text
        ("*timeout*", busy, true),
        ("*Timeout", busy, false),                   // token is ConnectTimeoutError
        ("connect*", busy, true),
        ("time?ut", busy, false),
        ("*timeout?rror", busy, true),
        ("hel?o", bare, true),
        ("hello*", bare, true),
        ("*xyz*", busy, false),
        // escaping
        ("user\\=alicemartin", busy, true),
        ("failed\\:", busy, true),
        ("message:hello\\:world", bare, true),      // punctuation only separates tokens
        ("message:hello\\ world", bare, true),
        ("@path:hello\\:world", busy, true),
        ("@path:\"hello:world\"", busy, true),
        ("@path:hello:world", busy, true),            // `:` is ordinary inside a value
        ("@http.url:\\/api\\/v1\\/users", busy, true),
        ("@http.url:/api/v1/users", busy, true),
        ("@http.url:/api/v1*", busy, true),
        ("@spaced:hello\\ world", busy, true),
        ("@spaced:hello?world", busy, true),
        ("@spaced:hello\\?world", busy, false),
        ("@path:hello\\*", busy, false),              // escaped `*` is literal
        // reserved attributes: whole value, case-insensitive
        ("service:checkout-api", busy, true),
        ("service:CHECKOUT-API", busy, true),
        ("service:checkout", busy, false),
        ("service:*api*", busy, true),
        ("service:*API", busy, true),
        ("host:web-*", busy, true),
        ("host:web-?", busy, true),
        ("host:web-??", busy, false),
        ("host:web", busy, false),
        ("source:nginx", busy, true),
        ("status:error", busy, true),
        ("status:(warn OR error)", busy, true),
        ("status:(warn OR info)", busy, false),
        ("status:(error -warn)", busy, true),
        ("status:(NOT error)", busy, false),
        // an event without a status is `info`, as Datadog's status remapper makes it
        ("status:info", bare, true),
        ("-status:info", bare, false),
        ("status:error", bare, false),
        ("service:\"checkout-api\"", busy, true),
        ("service:\"checkout*\"", busy, false),     // quotes make `*` literal
        ("host:*", busy, true),
        ("host:*", bare, false),
        ("-host:*", bare, true),
        ("host:web-1", bare, false),
        ("-host:web-1", bare, true),
        ("message:refused", busy, true),
        ("message:\"connection refused\"", busy, true),
        ("message:*", bare, true),
        // tags: key:value, case-insensitive, split at the first `:`
        ("env:prod", busy, true),
        ("env:PROD", busy, true),
        ("ENV:prod", busy, true),
        ("env:staging", busy, false),
        ("team:payments", busy, true),
        ("region:eu:west", busy, true),
        ("region:eu*", busy, true),
        ("env:*", busy, true),
        ("env:*", bare, false),
        ("canary:*", busy, false),                   // bare tags have no value to match
        ("-env:prod", bare, true),
        ("Env:Staging", busy, false),               // not an attribute: tags only
        ("@Env:Staging", busy, true),
        // attributes: case-sensitive, nested paths
        ("@user.name:Alice", busy, true),
        ("@user.name:alice", busy, false),
        ("@user.name:Al*", busy, true),
        ("@user.name:al*", busy, false),
        ("@user.roles:admin", busy, true),           // any array element
        ("@user.roles:root", busy, false),
        ("@items.id:7", busy, true),                 // through an array of objects
        ("@items.id:8", busy, false),
        ("@db.statement:\"SELECT 1\"", busy, true), // dotted key, not a path
        ("@user:*", busy, true),
        ("@nothing:*", busy, false),                 // null is absent
        ("@missing:*", busy, false),
        ("@missing:x", busy, false),
        ("-@missing:x", busy, true),
        ("-@missing:*", busy, true),
        ("@user.name.first:Alice", busy, false),
        ("@ok:false", busy, true),
        ("@empty:\"\"", busy, true),
        ("@empty:*", busy, true),
        ("@ok:f*", busy, true),
        ("@ok:true", busy, false),
        // numbers
        ("@http.status_code:503", busy, true),
        ("@http.status_code:503.0", busy, true),
        ("@http.status_code:50*", busy, false),      // wildcards never match numbers
        ("@http.status_code:>=500", busy, true),
        ("@http.status_code:>503", busy, false),
        ("@http.status_code:>=503", busy, true),
        ("@http.status_code:<503", busy, false),
        ("@http.status_code:<=503", busy, true),
        ("@http.status_code:<1000", busy, true),     // numeric, not lexical
        ("@http.status_code:>abc", busy, false),     // non-numeric bound vs number
        ("@duration:[100 TO 500]", busy, true),
        ("@duration:[250 TO 500]", busy, true),
        ("@duration:{250 TO 500]", busy, false),
        ("@duration:[100 TO 250]", busy, true),
        ("@duration:[100 TO 250}", busy, false),
        ("@duration:{100 TO 500}", busy, true),
        ("@duration:[300 TO *]", busy, false),
        ("@duration:[* TO 300]", busy, true),
        ("@duration:[ 100  TO  500 ]", busy, true),
        ("@ratio:<1", busy, true),
        ("@ratio:0.5", busy, true),
        ("@delta:-5", busy, true),
        ("@delta:<0", busy, true),
        ("@big:12345678901234567890", busy, true),
        ("@big:12345678901234567891", busy, false), // exact, not via f64
        // strings compare lexically, even numeric-looking ones
        ("@code:600", busy, true),
        ("@code:>=500", busy, true),
        ("@code:>=1000", busy, true),                // "600" > "1000" lexically
        ("@code:<1000", busy, false),
        ("@code:[5 TO 7]", busy, true),
        ("@user.name:>=Alz", busy, false),
        ("@user.name:>=Alb", busy, true),
        ("@user.name:[A TO B]", busy, true),
        ("@user.name:[a TO b]", busy, false),       // attributes: case-sensitive
        ("service:[a TO d]", busy, true),           // reserved: folded
        ("@ok:>a", busy, false),                     // booleans never compare
        ("@user:>a", busy, false),
        // boolean structure
        ("refused AND service:checkout-api", busy, true),
        ("refused AND service:web", busy, false),
        ("refused OR service:web", busy, true),
        ("nope OR service:web", busy, false),
        ("NOT refused", busy, false),
        ("-refused", busy, false),
        ("-nope", busy, true),
        ("nope OR refused AND env:prod", busy, true),          // AND binds tighter
        ("refused OR nope AND env:dev", busy, true),
        ("(refused OR nope) AND env:dev", busy, false),
        ("((refused OR nope) AND (env:prod OR env:dev)) -host:db-*", busy, true),
        ("-(service:web OR host:db-1)", busy, true),
        ("-(service:checkout-api OR host:db-1)", busy, false),
        ("NOT (env:dev) AND NOT -refused", busy, true),
        ("service:(checkout-api OR web) status:(error OR warn)", busy, true),
        ("@http.status_code:(503 OR 504)", busy, true),
        ("@http.status_code:(>=500 -503)", busy, false),
        ("@http.status_code:([500 TO 599] OR 404)", busy, true),
        ("status:((warn OR error) AND -info)", busy, true),
        ("hello or nope", bare, false),             // lower-case `or` is a word
        ("hello OR nope", bare, true),
        ("hello\tAND\nworld", bare, true),
        ("(hello)", bare, true),
        ("( hello   world )", bare, true),
    ];
    assert!(cases.len() >= 60);
    let mut wrong = Vec::new();
    for (query, event, expected) in cases {
        let q = Query::parse(query).unwrap_or_else(|e| panic!("{query:?} should parse: {e}"));
        assert_eq!(q.as_str(), *query);
        if q.matches(&event()) != *expected {
            wrong.push(*query);
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts for {wrong:?}");
}

#[test]
fn syntax_errors() {
    #[rustfmt::skip]
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "expected a search term, found end of query"),
        ("   ", 3, "expected a search term, found end of query"),
        ("(refused", 8, "expected `)` to close the `(` at position 0, found end of query"),
        ("a (b (c) d", 10, "expected `)` to close the `(` at position 2, found end of query"),
        ("refused)", 7, "expected a search term or end of query, found `)` without a matching `(`"),
        ("()", 1, "expected a search term after `(`, found `)`"),
        ("env:prod service:", 17, "expected a value after `service:`, found end of query"),
        ("service: web", 8, "expected a value after `service:`, found whitespace"),
        ("(service:)", 9, "expected a value after `service:`, found `)`"),
        ("@duration:[100 TO ]", 18, "expected an upper bound after `TO`, found `]`"),
        ("@duration:[ TO 5]", 12, "expected a lower bound after `[`, found `TO`"),
        ("@duration:[100 500]", 15, "expected `TO` between the bounds of the range, found `5`"),
        ("@duration:[100 TO 500", 21, "expected `]` or `}` to close the range at position 10, found end of query"),
        ("@duration:[1* TO 5]", 11, "expected a bound without wildcards (escape `*` and `?` as `\\*`, `\\?`), found `1*`"),
        ("@duration:>", 11, "expected a value after `>`, found end of query"),
        ("@duration:>= 5", 12, "expected a value after `>=`, found whitespace"),
        ("refused AND", 11, "expected a search term after `AND`, found end of query"),
        ("AND refused", 0, "expected a search term, found `AND`"),
        ("a OR OR b", 5, "expected a search term after `OR`, found `OR`"),
        ("a AND OR b", 6, "expected a search term after `AND`, found `OR`"),
        ("NOT", 3, "expected a search term after `NOT`, found end of query"),
        ("a - b", 3, "expected a search term right after `-`, found whitespace"),
        ("-", 1, "expected a search term right after `-`, found end of query"),
        ("\"connection refused", 19, "expected a closing `\"` for the quote at position 0, found end of query"),
        ("service:\"web", 12, "expected a closing `\"` for the quote at position 8, found end of query"),
        ("refused\\", 8, "expected a character after `\\`, found end of query"),
        (":web", 0, "expected a field name before `:`, found `:`"),
        ("@:web", 1, "expected an attribute name after `@`, found `:`"),
        ("*:web", 0, "expected a field name, found `*:` (full-text search over all attributes is not supported in filters)"),
        ("ser*ice:web", 0, "expected a field name without wildcards, found `ser*ice`"),
        ("\"\"", 0, "expected text between the quotes, found `\"\"`"),
        ("message:\"\"", 8, "expected text between the quotes, found `\"\"`"),
        ("status:(error OR)", 16, "expected a search term after `OR`, found `)`"),
        ("héllo wörld (", 13, "expected a search term after `(`, found end of query"), // chars, not bytes
    ];
    assert!(cases.len() >= 10);
    let mut wrong = Vec::new();
    for (query, position, message) in cases {
        let err = Query::parse(query).expect_err(query);
        if (err.position, err.message.as_str()) != (*position, *message) {
            wrong.push(format!("{query:?}: got {} {:?}", err.position, err.message));
            continue;
        }
        assert!(
            err.message
                .starts_with(&format!("expected {}", err.expected)),
            "query {query:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("at position {position}: {message}")
        );
    }
    assert!(wrong.is_empty(), "wrong errors:\n{}", wrong.join("\n"));
}

/// Groups and negations nest at most `MAX_DEPTH` deep: the parser recurses per
/// level, and 10,000 `(` (20 KB; the admin API takes 64 KiB) overflowed the
/// stack and aborted the process (the query fuzz target, proxy/fuzz).
#[test]
fn nesting_is_bounded() {
    use super::parse::MAX_DEPTH;
    let deep = |n: usize, open: &str, term: &str, close: &str| {
        format!("{}{term}{}", open.repeat(n), close.repeat(n))
    };
    #[rustfmt::skip]
    let shapes: &[(&str, &str, &str, &str)] = &[
        // opener, term, closer, prefix before the first opener
        ("(", "hello", ")", ""),
        ("NOT ", "hello", "", ""),
        ("-", "hello", "", ""),
        ("(-", "hello", ")", ""),
        ("(", "info", ")", "status:"),
    ];
    for (open, term, close, prefix) in shapes {
        let levels = if open.len() == 2 { 2 } else { 1 };
        let n = MAX_DEPTH / levels;
        // As deep as allowed: parses, matches (an even number of negations).
        let ok = format!("{prefix}{}", deep(n, open, term, close));
        let q = Query::parse(&ok).unwrap_or_else(|e| panic!("{n} x {open:?}: {e}"));
        assert!(q.matches(&bare()), "{n} x {open:?}");
        // Far more levels (a stack overflow once), and one more: refused where the level opens.
        for extra in [100_000, n + 1] {
            let err = Query::parse(&format!("{prefix}{}", deep(extra, open, term, close)))
                .expect_err(open);
            let at = prefix.len() + n * open.len();
            let message =
                format!("expected at most {MAX_DEPTH} nested groups and negations, found one more");
            assert_eq!(
                (err.position, err.message),
                (at, message),
                "{extra} x {open:?}"
            );
        }
    }
}

#[test]
fn query_is_shareable() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<Query>();
    let err: Box<dyn std::error::Error> = Box::new(Query::parse("(").unwrap_err());
    assert_eq!(
        err.to_string(),
        "at position 1: expected a search term after `(`, found end of query"
    );
}

mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        pub static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts this thread's allocations, so `matches` can be shown not to allocate.
    struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;
}

#[test]
fn matching_does_not_allocate() {
    let query = Query::parse(
        "(*timeout* OR \"connection refused\" OR message:>a) service:*API* env:(prod OR dev) \
         @http.status_code:[500 TO 599] @user.roles:adm?n @items.id:7 @code:>=500 -@missing:x status:error",
    )
    .unwrap();
    let event = busy();
    let before = alloc_count::ALLOCATIONS.with(|n| n.get());
    let mut hits = 0;
    for _ in 0..100 {
        hits += query.matches(&event) as usize;
    }
    let after = alloc_count::ALLOCATIONS.with(|n| n.get());
    assert_eq!(hits, 100);
    assert_eq!(after - before, 0, "matches allocated");
    // The counter does see allocations on this thread.
    let s = std::hint::black_box(String::from("x"));
    assert_eq!(alloc_count::ALLOCATIONS.with(|n| n.get()) - after, 1);
    drop(s);
}
