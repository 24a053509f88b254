//! The daemon's log through tracing: one line per event on stderr with a level word (`WARN
//! banned ...`), or straight to the journal (tracing-journald) when stderr is the journal
//! (`JOURNAL_STREAM`). Records of the `log` facade (aya, aya-log's program lines) come in too.
//! `GUARD_LOG` sets the level (`debug`, `info`, `warn`, `error`, or tracing's directives;
//! default info).
//!
//! Hand-written here: the line format, kept as the operator has read it (level padded to five,
//! then the message; no timestamp, the journal or the terminal adds one).
use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// `LEVEL message`, as the daemon has always written it.
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{:<5} ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the daemon's log (once; later calls do nothing).
pub fn init_logging() {
    let filter = || EnvFilter::try_from_env("GUARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journal) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(journal.with_syslog_identifier("guard".into()))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Line)
        .try_init();
}
