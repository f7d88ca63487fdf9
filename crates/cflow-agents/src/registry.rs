//! The set of drivers a server or worker offers, looked up by kind, so an unknown driver name is
//! refused with the list of known ones.

use crate::driver::{Driver, DriverError};
use crate::exec::{ExecConfig, ExecDriver};
use crate::noop::NoopDriver;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Drivers by [`Driver::kind`].
#[derive(Clone, Default)]
pub struct Drivers {
    by_kind: BTreeMap<&'static str, Arc<dyn Driver>>,
}

impl Drivers {
    /// No drivers at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The drivers this crate builds today: `exec` (with `exec_config`) and the `noop`
    /// benchmark driver.
    pub fn builtin(exec_config: ExecConfig) -> Self {
        let mut drivers = Self::new();
        drivers.register(Arc::new(ExecDriver::new(exec_config)));
        drivers.register(Arc::new(NoopDriver));
        drivers
    }

    /// The built-in drivers with `exec` running in `sandbox` (`None`: the operator turned the
    /// sandbox off, and every exec attempt says so).
    ///
    /// `claude`: the `claude-code` driver's settings; it runs the CLI through the same exec
    /// path (in the sandbox when there is one). `llm`: the `llm` driver's settings; its
    /// workbench runs commands through that exec path too.
    pub fn with_sandbox(
        exec_config: ExecConfig,
        sandbox: Option<Arc<cflow_sandbox::host::Sandbox>>,
        claude: Option<crate::claude::ClaudeConfig>,
        llm: Option<crate::llm::LlmConfig>,
    ) -> Self {
        let mut drivers = Self::builtin(exec_config.clone());
        let exec = match sandbox {
            Some(sandbox) => ExecDriver::sandboxed(exec_config, sandbox),
            None => ExecDriver::new(exec_config),
        };
        if let Some(claude) = claude {
            drivers.register(Arc::new(crate::claude::ClaudeCodeDriver::new(
                exec.clone(),
                claude,
            )));
        }
        if let Some(llm) = llm {
            drivers.register(Arc::new(crate::llm::LlmDriver::new(exec.clone(), llm)));
        }
        drivers.register(Arc::new(exec));
        drivers
    }

    /// Adds a driver, replacing (and returning) any driver of the same kind.
    pub fn register(&mut self, driver: Arc<dyn Driver>) -> Option<Arc<dyn Driver>> {
        self.by_kind.insert(driver.kind(), driver)
    }

    /// The driver of this kind, or an error naming the known kinds.
    pub fn get(&self, kind: &str) -> Result<Arc<dyn Driver>, DriverError> {
        self.by_kind
            .get(kind)
            .cloned()
            .ok_or_else(|| DriverError::UnknownDriver {
                kind: kind.to_string(),
                known: self.kinds().collect::<Vec<_>>().join(", "),
            })
    }

    /// The kinds offered, in name order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_kind.keys().copied()
    }
}

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}
