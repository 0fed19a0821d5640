//! One future that resolves when the process is asked to stop.

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
}

/// Resolves on the first SIGTERM or SIGINT. Install it early: signals that
/// arrive before the handler is registered would kill the process.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = StopSignal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => StopSignal::Term,
            _ = int.recv() => StopSignal::Int,
        }
    })
}
