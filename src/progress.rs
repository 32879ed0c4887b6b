//! Progress bars for the long commands (indicatif). A bar draws on stderr only when stderr is a
//! terminal; otherwise it stays hidden and `say` prints plain lines, so CI logs stay readable.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`; hidden when `quiet` or when stderr is not a terminal.
pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{prefix} [{bar:28}] {pos}/{len} {msg} ({elapsed}, ETA {eta})")
        .expect("a valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// Prints a line above the bar, or on stderr when the bar is hidden (unless `quiet`).
pub fn say(bar: &ProgressBar, quiet: bool, line: &str) {
    if quiet {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
