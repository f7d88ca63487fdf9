//! Roles, actions and the permission matrix: one pure function decides what a role may do.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A role bound to a principal at tenant or project scope (`superadmin` is platform-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Superadmin,
    Admin,
    Operator,
    Developer,
    Viewer,
    Auditor,
    /// A `cflow worker`'s key: it may connect as a worker of its tenant and nothing else.
    Worker,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Superadmin,
        Role::Admin,
        Role::Operator,
        Role::Developer,
        Role::Viewer,
        Role::Auditor,
        Role::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Superadmin => "superadmin",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role '{0}': expected one of superadmin, admin, operator, developer, viewer, auditor, worker"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Everything a principal can ask the platform to do. Each HTTP route and MCP tool maps to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Create a tenant (platform administration).
    TenantCreate,
    /// List every tenant (platform administration).
    TenantList,
    /// Create an API key in a tenant.
    KeyCreate,
    /// List the API keys of a tenant.
    KeyList,
    /// Revoke an API key of a tenant.
    KeyRevoke,
    /// Ask who the caller is.
    Whoami,
    /// Read, list or search memory.
    MemoryRead,
    /// Write or delete memory.
    MemoryWrite,
    /// Read or verify the audit ledger.
    AuditRead,
    /// Read platform-wide Prometheus metrics.
    MetricsRead,
    /// Read swarms, agents and their state.
    SwarmRead,
    /// Create, scale, pause, resume or stop swarms and spawn or stop agents.
    SwarmWrite,
    /// Read tasks, their attempts and logs.
    TaskRead,
    /// Submit tasks.
    TaskSubmit,
    /// Cancel tasks.
    TaskCancel,
    /// Connect as a worker and run assignments.
    WorkerConnect,
    /// Send a message between agents of a swarm.
    MessageSend,
    /// Change a tenant's scheduler weight and quotas (platform administration).
    TenantUpdate,
    /// Read model-call cost reports and the tenant's budgets.
    CostRead,
    /// Set or delete the tenant's spend budgets.
    BudgetWrite,
    /// List the names (never the values) of the tenant's secrets.
    SecretRead,
    /// Set or delete the tenant's secrets.
    SecretWrite,
    /// List the tenant's hooks and their deliveries.
    HookRead,
    /// Create, delete and test hooks, and re-queue dead deliveries.
    HookWrite,
}

impl Action {
    pub const ALL: [Action; 24] = [
        Action::TenantCreate,
        Action::TenantList,
        Action::KeyCreate,
        Action::KeyList,
        Action::KeyRevoke,
        Action::Whoami,
        Action::MemoryRead,
        Action::MemoryWrite,
        Action::AuditRead,
        Action::MetricsRead,
        Action::SwarmRead,
        Action::SwarmWrite,
        Action::TaskRead,
        Action::TaskSubmit,
        Action::TaskCancel,
        Action::WorkerConnect,
        Action::MessageSend,
        Action::TenantUpdate,
        Action::CostRead,
        Action::BudgetWrite,
        Action::SecretRead,
        Action::SecretWrite,
        Action::HookRead,
        Action::HookWrite,
    ];

    /// Whether the action changes state (and so is refused to read-only roles and audited).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            Action::TenantCreate
                | Action::KeyCreate
                | Action::KeyRevoke
                | Action::MemoryWrite
                | Action::SwarmWrite
                | Action::TaskSubmit
                | Action::TaskCancel
                | Action::WorkerConnect
                | Action::MessageSend
                | Action::TenantUpdate
                | Action::BudgetWrite
                | Action::SecretWrite
                | Action::HookWrite
        )
    }

    /// Whether the action is about the whole platform rather than one tenant.
    pub fn is_platform(self) -> bool {
        matches!(
            self,
            Action::TenantCreate | Action::TenantList | Action::TenantUpdate | Action::MetricsRead
        )
    }
}

/// The permission matrix. `superadmin` may do everything; platform actions are for it alone;
/// `viewer` and `auditor` never mutate; only `admin` manages keys; only `admin` and `auditor`
/// read the audit ledger; a `worker` key may only connect as a worker (and ask who it is), and
/// only a `worker` key (or a superadmin) may connect as one.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    if role == Superadmin {
        return true;
    }
    if action.is_platform() {
        return false;
    }
    if role == Worker {
        return matches!(action, WorkerConnect | Whoami);
    }
    match action {
        Whoami | MemoryRead | SwarmRead | TaskRead => true,
        KeyCreate | KeyList | KeyRevoke => role == Admin,
        AuditRead => matches!(role, Admin | Auditor),
        MemoryWrite | TaskSubmit | TaskCancel | MessageSend => {
            matches!(role, Admin | Operator | Developer)
        }
        SwarmWrite => matches!(role, Admin | Operator),
        WorkerConnect => false,
        CostRead => matches!(role, Admin | Operator | Auditor),
        BudgetWrite => role == Admin,
        // Secrets hold credentials: only the tenant's admins manage them, even their names.
        SecretRead | SecretWrite => role == Admin,
        // Hooks run commands and send data out of the platform: only admins manage them;
        // everyone who may read the tenant's tasks may see them and their deliveries.
        HookRead => true,
        HookWrite => role == Admin,
        TenantCreate | TenantList | TenantUpdate | MetricsRead => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole matrix, written out so that a change to the policy is a visible change here.
    /// Columns: superadmin, admin, operator, developer, viewer, auditor, worker.
    const MATRIX: &[(Action, [bool; 7])] = &[
        (
            Action::TenantCreate,
            [true, false, false, false, false, false, false],
        ),
        (
            Action::TenantList,
            [true, false, false, false, false, false, false],
        ),
        (
            Action::KeyCreate,
            [true, true, false, false, false, false, false],
        ),
        (
            Action::KeyList,
            [true, true, false, false, false, false, false],
        ),
        (
            Action::KeyRevoke,
            [true, true, false, false, false, false, false],
        ),
        (Action::Whoami, [true, true, true, true, true, true, true]),
        (
            Action::MemoryRead,
            [true, true, true, true, true, true, false],
        ),
        (
            Action::MemoryWrite,
            [true, true, true, true, false, false, false],
        ),
        (
            Action::AuditRead,
            [true, true, false, false, false, true, false],
        ),
        (
            Action::MetricsRead,
            [true, false, false, false, false, false, false],
        ),
        (
            Action::SwarmRead,
            [true, true, true, true, true, true, false],
        ),
        (
            Action::SwarmWrite,
            [true, true, true, false, false, false, false],
        ),
        (
            Action::TaskRead,
            [true, true, true, true, true, true, false],
        ),
        (
            Action::TaskSubmit,
            [true, true, true, true, false, false, false],
        ),
        (
            Action::TaskCancel,
            [true, true, true, true, false, false, false],
        ),
        (
            Action::WorkerConnect,
            [true, false, false, false, false, false, true],
        ),
        (
            Action::MessageSend,
            [true, true, true, true, false, false, false],
        ),
        (
            Action::TenantUpdate,
            [true, false, false, false, false, false, false],
        ),
        (
            Action::CostRead,
            [true, true, true, false, false, true, false],
        ),
        (
            Action::BudgetWrite,
            [true, true, false, false, false, false, false],
        ),
        (
            Action::SecretRead,
            [true, true, false, false, false, false, false],
        ),
        (
            Action::SecretWrite,
            [true, true, false, false, false, false, false],
        ),
        (
            Action::HookRead,
            [true, true, true, true, true, true, false],
        ),
        (
            Action::HookWrite,
            [true, true, false, false, false, false, false],
        ),
    ];

    #[test]
    fn permission_matrix_is_exactly_the_table() {
        assert_eq!(MATRIX.len(), Action::ALL.len(), "every action has a row");
        for (action, row) in MATRIX {
            for (role, expected) in Role::ALL.iter().zip(row) {
                assert_eq!(
                    allows(*role, *action),
                    *expected,
                    "{role} on {action:?} should be {expected}"
                );
            }
        }
    }

    #[test]
    fn read_only_roles_never_mutate() {
        for action in Action::ALL.into_iter().filter(|a| a.is_mutating()) {
            assert!(!allows(Role::Viewer, action), "viewer may not {action:?}");
            assert!(!allows(Role::Auditor, action), "auditor may not {action:?}");
        }
    }

    #[test]
    fn roles_round_trip_through_strings() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("unknown role 'root'"));
    }
}
