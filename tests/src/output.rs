//! A child's output captured line by line by reader threads, so a test can
//! wait for a line (an event) instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The lines so far, how many streams are still open, and when each line
/// was read (wall-clock milliseconds since the epoch).
type Shared = (Mutex<(Vec<String>, usize, Vec<u64>)>, Condvar);

/// Lines read so far from one or more streams, with a wake-up on each line.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    inner: Arc<Shared>,
}

impl Lines {
    /// Starts a thread that reads `r` line by line into this buffer.
    pub fn follow<R: Read + Send + 'static>(&self, r: R) {
        let me = self.clone();
        {
            let (m, _) = &*me.inner;
            m.lock().unwrap().1 += 1;
        }
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let (m, cv) = &*me.inner;
                let mut g = m.lock().unwrap();
                g.0.push(line);
                g.2.push(at);
                drop(g);
                cv.notify_all();
            }
            let (m, cv) = &*me.inner;
            m.lock().unwrap().1 -= 1;
            cv.notify_all();
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().0.clone()
    }

    /// Every line with the wall-clock milliseconds it was read at.
    pub fn timed(&self) -> Vec<(u64, String)> {
        let g = self.inner.0.lock().unwrap();
        g.2.iter().copied().zip(g.0.iter().cloned()).collect()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.snapshot().iter().any(|l| l.contains(needle))
    }

    /// Waits until a line contains `needle`; returns that line, or `None` after `limit`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Option<String> {
        self.wait_for_nth(needle, 1, limit)
    }

    /// Waits until `n` lines contain `needle`; returns the n-th.
    pub fn wait_for_nth(&self, needle: &str, n: usize, limit: Duration) -> Option<String> {
        let end = Instant::now() + limit;
        let (m, cv) = &*self.inner;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.0.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            g = cv.wait_timeout(g, end - now).unwrap().0;
        }
    }

    /// Waits until every stream being followed has closed (bounded).
    pub fn wait_closed(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let (m, cv) = &*self.inner;
        let mut g = m.lock().unwrap();
        while g.1 > 0 {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            g = cv.wait_timeout(g, end - now).unwrap().0;
        }
        true
    }
}
