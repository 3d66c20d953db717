//! `conclave bench index`: what the knowledge base costs
//! ([`conclave::bench::index`]), printed.

use super::exit;

/// `conclave bench index`' arguments.
#[derive(clap::Args)]
pub(crate) struct IndexArgs {
    /// Passages in the index (100 per generated file).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) passages: usize,
    /// Queries searched.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) queries: usize,
    /// Passages asked of each query.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
    #[arg(long)]
    pub(crate) json: bool,
}

/// Builds, rebuilds and searches an index of a generated corpus.
pub(crate) async fn index(args: IndexArgs) -> u8 {
    let IndexArgs {
        passages,
        queries,
        top,
        json,
    } = args;
    let measured =
        tokio::task::spawn_blocking(move || conclave::bench::index::run(passages, queries, top))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
    let b = match measured {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&b).expect("serialisable")
        );
        return exit::OK;
    }
    println!(
        "index of {} passages ({} files, {} words, {:.1} MiB on disk)",
        b.passages,
        b.files,
        b.words,
        b.index_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  build:            {:.2?} ({:.0} passages/s)",
        b.build, b.passages_per_s
    );
    println!("  rebuild, 1 file changed: {:.2?}", b.rebuild_one);
    println!(
        "  search, top {} of {} queries one at a time, index kept open: p50 {:.1?}, p99 {:.1?}",
        b.top, b.queries, b.search.p50, b.search.p99
    );
    println!(
        "  search, index opened per query ({} queries): p50 {:.1?}, p99 {:.1?}",
        b.open_and_search.calls, b.open_and_search.p50, b.open_and_search.p99
    );
    exit::OK
}
