//! The first plugin of README.md, compiled and tested as written: `readme/lib.rs` is the README's `src/lib.rs`
//! block, character for character (checked below), tests included.

#[path = "readme/lib.rs"]
mod myfilter;

#[test]
fn the_readme_shows_this_plugin_verbatim() {
    let readme = include_str!("../README.md");
    let code = include_str!("readme/lib.rs");
    let block = format!("```rust\n{code}```\n");
    assert!(
        readme.contains(&block),
        "README.md's first plugin differs from sdk/tests/readme/lib.rs: copy one to the other"
    );
}
