//! Model calls, cost rollups and budgets, with the spend of each budget's current period.

use crate::{ctx, each_backend, page, system, tenant};
use cflow_core::budget::Period;
use cflow_core::timefmt::parse_rfc3339;
use cflow_store::{AuditQuery, CostBy, CostRow, Error, NewBudget, NewModelCall, Store};

fn at(s: &str) -> i64 {
    parse_rfc3339(s).unwrap()
}

/// A call of `cost` micro-dollars at `when`, with recognisable token counts.
fn call(
    tenant: &str,
    project: Option<&str>,
    task: Option<&str>,
    cost: u64,
    when: &str,
) -> NewModelCall {
    NewModelCall {
        tenant_id: tenant.to_string(),
        project_id: project.map(str::to_string),
        swarm_id: Some("swarm-1".to_string()),
        agent_id: Some("agent-1".to_string()),
        task_id: task.map(str::to_string),
        provider: "anthropic".to_string(),
        model: "claude-sonnet-4".to_string(),
        input_tokens: 100,
        output_tokens: 10,
        cache_read_tokens: 5,
        cache_write_tokens: 1,
        cost_micros: cost,
        priced: true,
        at: at(when),
    }
}

async fn budget(store: &Store, t: &str, project: Option<&str>, period: Period, usd: u64) -> String {
    let b = store
        .set_budget(
            &ctx(t),
            t,
            NewBudget {
                project: project.map(str::to_string),
                period,
                limit_micros: usd * 1_000_000,
            },
        )
        .await
        .unwrap();
    b.id
}

#[tokio::test]
async fn rollups_group_and_filter_by_time() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "cost").await;
        let other = tenant(&store, "cost-other").await;
        let calls = [
            call(
                &t,
                Some("web"),
                Some("task-a"),
                1_000,
                "2026-11-02T10:00:00Z",
            ),
            call(
                &t,
                Some("web"),
                Some("task-a"),
                2_000,
                "2026-11-03T10:00:00Z",
            ),
            call(
                &t,
                Some("api"),
                Some("task-b"),
                4_000,
                "2026-11-04T10:00:00Z",
            ),
            call(&t, None, None, 8_000, "2026-11-05T10:00:00Z"),
            NewModelCall {
                model: "mystery".to_string(),
                priced: false,
                ..call(&t, Some("api"), None, 0, "2026-11-05T11:00:00Z")
            },
            call(
                &other,
                Some("web"),
                Some("task-a"),
                1_000_000,
                "2026-11-03T10:00:00Z",
            ),
        ];
        let mut ids = Vec::new();
        for c in calls {
            ids.push(store.record_model_call(c).await.unwrap());
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

        let all = store
            .cost_report(&t, CostBy::Tenant, None, None)
            .await
            .unwrap();
        assert_eq!(
            all,
            vec![CostRow {
                key: Some(t.clone()),
                calls: 5,
                unpriced_calls: 1,
                input_tokens: 500,
                output_tokens: 50,
                cache_read_tokens: 25,
                cache_write_tokens: 5,
                cost_micros: 15_000,
            }]
        );
        let by_project = store
            .cost_report(&t, CostBy::Project, None, None)
            .await
            .unwrap();
        let summary: Vec<_> = by_project
            .iter()
            .map(|r| (r.key.as_deref(), r.calls, r.cost_micros))
            .collect();
        assert_eq!(
            summary,
            vec![
                (None, 1, 8_000),
                (Some("api"), 2, 4_000),
                (Some("web"), 2, 3_000)
            ]
        );
        let by_model = store
            .cost_report(&t, CostBy::Model, None, None)
            .await
            .unwrap();
        let summary: Vec<_> = by_model
            .iter()
            .map(|r| (r.key.as_deref(), r.calls, r.unpriced_calls, r.cost_micros))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some("claude-sonnet-4"), 4, 0, 15_000),
                (Some("mystery"), 1, 1, 0)
            ]
        );
        for by in [CostBy::Swarm, CostBy::Agent] {
            let rows = store.cost_report(&t, by, None, None).await.unwrap();
            assert_eq!(rows.len(), 1, "{by:?}");
            assert_eq!(rows[0].cost_micros, 15_000);
        }
        // [since, until): the 3rd is in, the 5th is out.
        let window = store
            .cost_report(
                &t,
                CostBy::Task,
                Some(at("2026-11-03T00:00:00Z")),
                Some(at("2026-11-05T10:00:00Z")),
            )
            .await
            .unwrap();
        let summary: Vec<_> = window
            .iter()
            .map(|r| (r.key.as_deref(), r.cost_micros))
            .collect();
        assert_eq!(
            summary,
            vec![(Some("task-b"), 4_000), (Some("task-a"), 2_000)]
        );

        // A task's own totals; another tenant's task of the same id is not counted.
        let a = store.task_cost(&t, "task-a").await.unwrap().unwrap();
        assert_eq!((a.calls, a.input_tokens, a.cost_micros), (2, 200, 3_000));
        assert_eq!(store.task_cost(&t, "task-none").await.unwrap(), None);
        // Tenants are isolated, and an empty report is empty.
        let fresh = tenant(&store, "cost-empty").await;
        assert!(
            store
                .cost_report(&fresh, CostBy::Model, None, None)
                .await
                .unwrap()
                .is_empty()
        );

        // Recording is not audited.
        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            since: None,
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap();
        assert!(entries.items.iter().all(|e| !e.action.starts_with("model")));
        // An unknown tenant is refused.
        let err = store
            .record_model_call(call(
                "no-such-tenant",
                None,
                None,
                1,
                "2026-11-02T10:00:00Z",
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn budgets_are_set_replaced_listed_deleted_and_audited() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "budgets").await;
        let month = budget(&store, &t, None, Period::Month, 10).await;
        let again = budget(&store, &t, None, Period::Month, 20).await;
        assert_eq!(month, again, "same scope and period: the limit is replaced");
        let web = budget(&store, &t, Some("web"), Period::Day, 1).await;
        let list = store.list_budgets(&t).await.unwrap();
        let summary: Vec<_> = list
            .iter()
            .map(|b| (b.project.as_deref(), b.period, b.limit_micros))
            .collect();
        assert_eq!(
            summary,
            vec![
                (None, Period::Month, 20_000_000),
                (Some("web"), Period::Day, 1_000_000)
            ]
        );
        // Bad input changes nothing.
        let err = store
            .set_budget(
                &ctx(&t),
                &t,
                NewBudget {
                    project: Some("bad name!".into()),
                    period: Period::Week,
                    limit_micros: 1,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        // Another tenant can neither see nor delete them.
        let other = tenant(&store, "budgets-other").await;
        assert!(store.list_budgets(&other).await.unwrap().is_empty());
        let err = store
            .delete_budget(&ctx(&other), &other, &web)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert_eq!(store.list_budgets(&t).await.unwrap().len(), 2);

        store.delete_budget(&ctx(&t), &t, &web).await.unwrap();
        let err = store.delete_budget(&ctx(&t), &t, &web).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert_eq!(store.list_budgets(&t).await.unwrap().len(), 1);

        let q = AuditQuery {
            tenant_id: Some(t.clone()),
            since: None,
        };
        let entries = store.audit_list(&q, &page(1000, None)).await.unwrap();
        let actions: Vec<_> = entries
            .items
            .iter()
            .filter(|e| e.action.starts_with("budget."))
            .map(|e| (e.action.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("budget.set", "success"),
                ("budget.set", "success"),
                ("budget.set", "success"),
                ("budget.delete", "success"),
                ("budget.delete", "not_found"),
            ]
        );
        let err = store
            .set_budget(
                &system(),
                "no-such-tenant",
                NewBudget {
                    project: None,
                    period: Period::Day,
                    limit_micros: 1,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn budget_status_counts_the_current_period_only() {
    each_backend(|store, _| async move {
        let t = tenant(&store, "spend").await;
        let name = store.get_tenant(&t).await.unwrap().unwrap().name;
        let now = at("2026-11-26T12:00:00Z"); // a Thursday
        assert_eq!(store.budget_status(&t, None, now).await.unwrap(), Ok(()));

        let day = budget(&store, &t, None, Period::Day, 1).await;
        // $0.60 yesterday (last micro-second of it) and $0.60 today at midnight.
        let spend = [
            ("2026-11-25T23:59:59.999Z", 600_000),
            ("2026-11-26T00:00:00Z", 600_000),
        ];
        for (when, cost) in spend {
            store
                .record_model_call(call(&t, None, None, cost, when))
                .await
                .unwrap();
        }
        assert_eq!(store.budget_status(&t, None, now).await.unwrap(), Ok(()));
        store
            .record_model_call(call(&t, None, None, 400_000, "2026-11-26T11:00:00Z"))
            .await
            .unwrap();
        let e = store
            .budget_status(&t, None, now)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.budget_id, day);
        assert_eq!((e.spent_micros, e.limit_micros), (1_000_000, 1_000_000));
        assert_eq!(e.resets_at, at("2026-11-27T00:00:00Z"));
        assert_eq!(e.tenant, name);
        assert_eq!(
            e.to_string(),
            format!(
                "budget 'tenant {name}, day' is spent: $1.00 of $1.00; it resets at \
                 2026-11-27T00:00:00Z — raise it with PUT /api/v1/budgets"
            )
        );
        // Tomorrow the day's spend starts from zero.
        let tomorrow = at("2026-11-27T00:00:00Z");
        assert_eq!(
            store.budget_status(&t, None, tomorrow).await.unwrap(),
            Ok(())
        );

        // A week budget (from Monday the 23rd) also spent: the one that resets last is named.
        let week = budget(&store, &t, None, Period::Week, 2).await;
        store
            .record_model_call(call(&t, None, None, 500_000, "2026-11-23T00:00:00Z"))
            .await
            .unwrap();
        // Sunday the 22nd belongs to the previous week.
        store
            .record_model_call(call(&t, None, None, 5_000_000, "2026-11-22T23:59:59.999Z"))
            .await
            .unwrap();
        let e = store
            .budget_status(&t, None, now)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.budget_id.as_str(), e.spent_micros),
            (week.as_str(), 2_100_000)
        );
        assert_eq!(e.resets_at, at("2026-11-30T00:00:00Z"));
        store.delete_budget(&ctx(&t), &t, &week).await.unwrap();
        store.delete_budget(&ctx(&t), &t, &day).await.unwrap();

        // Month: the 22nd's $5 counts (November so far: $7.10), October's $9 does not.
        store
            .record_model_call(call(&t, None, None, 9_000_000, "2026-10-31T23:59:59.999Z"))
            .await
            .unwrap();
        let month = budget(&store, &t, None, Period::Month, 7).await;
        let e = store
            .budget_status(&t, None, now)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.budget_id.as_str(), e.spent_micros),
            (month.as_str(), 7_100_000)
        );
        assert_eq!(e.resets_at, at("2026-12-01T00:00:00Z"));
        assert!(e.to_string().contains("$7.10 of $7.00"), "{e}");
        assert_eq!(
            store
                .budget_status(&t, None, at("2026-12-01T00:00:00Z"))
                .await
                .unwrap(),
            Ok(())
        );
        store.delete_budget(&ctx(&t), &t, &month).await.unwrap();

        // A project budget counts only that project's calls, and binds only that project.
        let web = budget(&store, &t, Some("web"), Period::Month, 1).await;
        assert_eq!(
            store.budget_status(&t, Some("web"), now).await.unwrap(),
            Ok(())
        );
        store
            .record_model_call(call(
                &t,
                Some("web"),
                None,
                1_500_000,
                "2026-11-26T11:30:00Z",
            ))
            .await
            .unwrap();
        let e = store
            .budget_status(&t, Some("web"), now)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.budget_id.as_str(), e.spent_micros),
            (web.as_str(), 1_500_000)
        );
        assert_eq!(e.which(), "project web, month");
        assert_eq!(
            store.budget_status(&t, Some("api"), now).await.unwrap(),
            Ok(())
        );
        assert_eq!(store.budget_status(&t, None, now).await.unwrap(), Ok(()));
        // A zero limit refuses everything, even before any spend.
        let other = tenant(&store, "spend-zero").await;
        budget(&store, &other, None, Period::Day, 0).await;
        assert!(
            store
                .budget_status(&other, None, now)
                .await
                .unwrap()
                .is_err()
        );
    })
    .await;
}
