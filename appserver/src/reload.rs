//! What a reload (SIGHUP, `systemctl reload`) replaces while everything else
//! runs on: the TLS material (key store, trust store), the command policy and
//! `allowedClients`, and the audit log (reopened: rotate it by moving it and
//! reloading). New connections use the new material; established sessions
//! keep the one they were authenticated with, and no process is touched.
//! A reload that finds any problem replaces nothing: the material in force
//! stays, and the log says why.

use std::sync::{Arc, RwLock};

/// A value replaced whole on a reload; readers take the current one.
#[derive(Debug)]
pub struct Swap<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Swap<T> {
    fn clone(&self) -> Self {
        Swap(self.0.clone())
    }
}

impl<T> Swap<T> {
    pub fn new(v: T) -> Swap<T> {
        Swap(Arc::new(RwLock::new(Arc::new(v))))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, v: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }
}

impl<T: Default> Default for Swap<T> {
    fn default() -> Self {
        Swap::new(T::default())
    }
}
