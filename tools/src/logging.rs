//! The broker's logs: `tracing` to stderr, human-readable or JSON, filtered by a directive
//! (`info`, `info,corelog_net=debug`) that the admin API can change while the broker runs.
//! glommio logs through `log`; the `tracing-log` bridge installed with the subscriber carries
//! its lines into the same output.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;

/// Changes the log filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl {
    /// The filter directive in force.
    pub fn filter(&self) -> String {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the filter; an invalid directive changes nothing and says why.
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let directive = directive.trim();
        let filter = EnvFilter::try_new(directive).map_err(|e| format!("invalid log filter {directive:?}: {e}"))?;
        let most_verbose = filter.max_level_hint();
        self.handle.reload(filter).map_err(|e| format!("cannot change the log filter: {e}"))?;
        // The `log` crate (glommio) has its own ceiling, set once at start: move it too.
        log::set_max_level(log_level(most_verbose));
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = directive.to_string();
        tracing::info!(filter = directive, "log filter changed");
        Ok(())
    }
}

/// The `log` ceiling matching a `tracing` one (None: no hint, everything may pass).
fn log_level(level: Option<tracing_subscriber::filter::LevelFilter>) -> log::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match level {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Installs the process's subscriber. An invalid `directive` falls back to `info` (the config
/// check refuses one before a broker starts).
pub fn init(format: LogFormat, directive: &str) -> Option<Arc<LogControl>> {
    let (filter, directive) = match EnvFilter::try_new(directive) {
        Ok(filter) => (filter, directive.to_string()),
        Err(_) => (EnvFilter::new("info"), "info".to_string()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let output = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    match tracing_subscriber::registry().with(filter).with(output).try_init() {
        Ok(()) => Some(Arc::new(LogControl { handle, current: Mutex::new(directive) })),
        Err(error) => {
            eprintln!("corelog: cannot initialise logging: {error}");
            None
        }
    }
}
