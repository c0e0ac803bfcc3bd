//! Running corelog's Kafka client from the CLI: a glommio executor on the calling thread,
//! and errors reported as one line with an exit code.

use std::process::ExitCode;

use corelog_client::Error;

/// Runs `work` to completion on a glommio executor on this thread.
pub fn block_on<T>(work: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| Error::Invalid(format!("cannot start the I/O executor (io_uring): {e}")))?;
    executor.run(work)
}

/// One line on stderr; exit 3 when no broker answered, 1 for anything the broker refused.
pub fn report(error: &Error) -> ExitCode {
    match error {
        Error::NoBroker(_) | Error::Io { .. } | Error::Timeout { .. } | Error::Closed => {
            eprintln!("corelog: {error} (is the broker running, and is --brokers its Kafka listener?)");
            ExitCode::from(3)
        }
        Error::Invalid(_) => {
            eprintln!("corelog: {error}");
            ExitCode::from(2)
        }
        error => {
            eprintln!("corelog: {}", crate::topic::with_hint(error));
            ExitCode::from(1)
        }
    }
}
