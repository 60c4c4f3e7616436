//! The README shows `examples/scan_host.rs`'s function as it is: the example compiles with the
//! crate's targets, and this keeps the README's copy from drifting.

#[test]
fn the_readme_shows_the_compiled_example() {
    let example = include_str!("../examples/scan_host.rs");
    let readme = include_str!("../../../README.md");
    let start = example
        .find("use futures_util::StreamExt;")
        .expect("the example's first line");
    let end = example.find("\n#[tokio::main").expect("the example's main");
    let shown = example[start..end].trim_end();
    assert!(
        readme.contains(shown),
        "README.md (\"From Rust: the client crate\") no longer shows examples/scan_host.rs:\n{shown}"
    );
}
