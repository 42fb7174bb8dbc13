//! Projects and the owners of keys: users and service accounts.

use async_trait::async_trait;

use super::*;

pub(super) const SA_SELECT: &str = "SELECT id, project_id, name, role, created_at FROM service_accounts";

pub(super) const USER_SELECT: &str = "SELECT id, name, email, role, added_at FROM users";

const PROJECT_USER_SELECT: &str = "SELECT u.id, u.name, u.email, u.role AS org_role, pu.project_id, pu.role, \
     pu.added_at FROM project_users pu JOIN users u ON u.id = pu.user_id";

fn project_user_from_row(row: &AnyRow) -> StoreResult<ProjectUser> {
    Ok(ProjectUser {
        user: User {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            role: row.try_get("org_role")?,
            added_at: row.try_get("added_at")?,
        },
        project_id: row.try_get("project_id")?,
        role: row.try_get("role")?,
        added_at: row.try_get("added_at")?,
    })
}

pub(super) fn project_from_row(row: &AnyRow) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        archived_at: row.try_get("archived_at")?,
        access: access_from_row(row)?,
        max_key_age_seconds: row.try_get("max_key_age_seconds")?,
        rate_limits: project_rate_limits(row.try_get("rate_limits")?)?,
        budget: budget_from_row(row)?,
    })
}

pub(super) fn project_rate_limits(json: Option<String>) -> StoreResult<Vec<ModelLimits>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        model: String,
        limits: RateLimits,
    }
    let entries: Vec<Entry> = match json {
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("project rate limits: {e}")))?
        }
        None => Vec::new(),
    };
    Ok(entries.into_iter().map(|e| ModelLimits { model: e.model, limits: e.limits }).collect())
}

pub(super) fn service_account_from_row(row: &AnyRow) -> StoreResult<ServiceAccount> {
    Ok(ServiceAccount {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        role: row.try_get("role")?,
        added_at: row.try_get("added_at")?,
    })
}

#[async_trait]
impl OwnerStore for SqlStore {
    async fn list_projects(&self, q: &PageQuery, include_archived: bool) -> StoreResult<Page<Project>> {
        let filter = if include_archived { "1 = 1" } else { "archived_at IS NULL" };
        self.paged(&self.project_select, "projects", filter, &[], q, project_from_row).await
    }

    async fn all_projects(&self) -> StoreResult<Vec<Project>> {
        let rows = sqlx::query(&self.engine.sql(format!("{} ORDER BY rowid", self.project_select)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(project_from_row).collect()
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        self.one(&format!("{} WHERE id = ?", self.project_select), id, project_from_row).await
    }

    async fn create_project(&self, name: &str, access: &Access, now: Timestamp) -> StoreResult<Project> {
        let id = crate::ids::project_id();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            &self.engine.sql("INSERT INTO projects (id, name, created_at, models, allowed_ips) VALUES (?, ?, ?, ?, ?)"),
        )
        .bind(&id)
        .bind(name)
        .bind(now)
        .bind(json_list(access.models.as_ref()))
        .bind(ips_json(&access.allowed_ips))
        .execute(&mut *tx)
        .await?;
        self.insert_service_account(&mut tx, Some(&id), "default", "member", true, now).await?;
        tx.commit().await?;
        Ok(Project {
            id,
            name: name.to_owned(),
            created_at: now,
            archived_at: None,
            access: access.clone(),
            max_key_age_seconds: None,
            rate_limits: Vec::new(),
            budget: None,
        })
    }

    async fn update_project(&self, id: &str, update: &ProjectUpdate) -> StoreResult<Option<Project>> {
        let mut tx = self.begin_write().await?;
        if let Some(name) = &update.name {
            sqlx::query(&self.engine.sql("UPDATE projects SET name = ? WHERE id = ?"))
                .bind(name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(models) = &update.models {
            sqlx::query(&self.engine.sql("UPDATE projects SET models = ? WHERE id = ?"))
                .bind(json_list(models.as_ref()))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(ips) = &update.allowed_ips {
            sqlx::query(&self.engine.sql("UPDATE projects SET allowed_ips = ? WHERE id = ?"))
                .bind(ips_json(ips))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(budget) = update.budget {
            sqlx::query(
                &self.engine.sql("UPDATE projects SET budget_nanos = ?, budget_alert_percent = ? WHERE id = ?"),
            )
            .bind(budget.map(|b| b.monthly_nanos))
            .bind(budget.map(|b| i64::from(b.alert_percent)))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(age) = update.max_key_age_seconds {
            sqlx::query(&self.engine.sql("UPDATE projects SET max_key_age_seconds = ? WHERE id = ?"))
                .bind(age)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get_project(id).await
    }

    async fn set_project_rate_limit(
        &self,
        id: &str,
        model: &str,
        limits: Option<&RateLimits>,
    ) -> StoreResult<Option<Project>> {
        match limits.and_then(limits_json) {
            Some(json) => {
                sqlx::query(&self.engine.sql(
                    "INSERT INTO project_rate_limits (project_id, model, limits) VALUES (?, ?, ?) \
                     ON CONFLICT (project_id, model) DO UPDATE SET limits = excluded.limits",
                ))
                .bind(id)
                .bind(model)
                .bind(json)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query(&self.engine.sql("DELETE FROM project_rate_limits WHERE project_id = ? AND model = ?"))
                    .bind(id)
                    .bind(model)
                    .execute(&self.pool)
                    .await?;
            }
        }
        self.get_project(id).await
    }

    async fn archive_project(&self, id: &str, now: Timestamp) -> StoreResult<Option<Project>> {
        sqlx::query(&self.engine.sql("UPDATE projects SET archived_at = ? WHERE id = ? AND archived_at IS NULL"))
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_project(id).await
    }

    async fn create_user(&self, name: &str, email: &str, role: &str, now: Timestamp) -> StoreResult<User> {
        let id = crate::ids::user_id();
        sqlx::query(&self.engine.sql("INSERT INTO users (id, name, email, role, added_at) VALUES (?, ?, ?, ?, ?)"))
            .bind(&id)
            .bind(name)
            .bind(email)
            .bind(role)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    StoreError::Duplicate("a user with this email")
                }
                _ => StoreError::Database(e),
            })?;
        Ok(User { id, name: name.to_owned(), email: email.to_owned(), role: role.to_owned(), added_at: now })
    }

    async fn list_users(&self, q: &PageQuery) -> StoreResult<Page<User>> {
        self.paged(USER_SELECT, "users", "deleted_at IS NULL", &[], q, user_from_row).await
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<User>> {
        self.one(&format!("{USER_SELECT} WHERE id = ? AND deleted_at IS NULL"), id, user_from_row).await
    }

    async fn update_user_role(&self, id: &str, role: &str) -> StoreResult<Option<User>> {
        sqlx::query(&self.engine.sql("UPDATE users SET role = ? WHERE id = ? AND deleted_at IS NULL"))
            .bind(role)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_user(id).await
    }

    async fn delete_user(&self, id: &str, revocation: &Revocation) -> StoreResult<Option<Vec<KeyRecord>>> {
        let revoked = self.delete_owner("users", "user", id, revocation).await?;
        if revoked.is_some() {
            // A removed person keeps no project and no dashboard session.
            for table in ["project_users", "dashboard_sessions"] {
                sqlx::query(&self.engine.sql(format!("DELETE FROM {table} WHERE user_id = ?")))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(revoked)
    }

    async fn users_by_email(&self, email: &str) -> StoreResult<Vec<User>> {
        let sql = self.engine.sql(format!("{USER_SELECT} WHERE LOWER(email) = LOWER(?) AND deleted_at IS NULL"));
        let rows = sqlx::query(&sql).bind(email).fetch_all(&self.pool).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn put_project_user(&self, project_id: &str, user_id: &str, role: &str, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let updated =
            sqlx::query(&self.engine.sql("UPDATE project_users SET role = ? WHERE project_id = ? AND user_id = ?"))
                .bind(role)
                .bind(project_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if updated == 0 {
            sqlx::query(
                &self.engine.sql("INSERT INTO project_users (project_id, user_id, role, added_at) VALUES (?, ?, ?, ?)"),
            )
            .bind(project_id)
            .bind(user_id)
            .bind(role)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_project_users(&self, project_id: &str, q: &PageQuery) -> StoreResult<Page<ProjectUser>> {
        let rows = sqlx::query(&self.engine.sql(format!(
            "{PROJECT_USER_SELECT} WHERE pu.project_id = ? AND u.deleted_at IS NULL \
             AND (? IS NULL OR u.rowid > (SELECT rowid FROM users WHERE id = ?)) ORDER BY u.rowid LIMIT ?"
        )))
        .bind(project_id)
        .bind(&q.after)
        .bind(&q.after)
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(page(rows.iter().map(project_user_from_row).collect::<StoreResult<Vec<_>>>()?, q.limit))
    }

    async fn get_project_user(&self, project_id: &str, user_id: &str) -> StoreResult<Option<ProjectUser>> {
        let row =
            sqlx::query(&self.engine.sql(format!(
                "{PROJECT_USER_SELECT} WHERE pu.project_id = ? AND pu.user_id = ? AND u.deleted_at IS NULL"
            )))
            .bind(project_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(project_user_from_row).transpose()
    }

    async fn remove_project_user(&self, project_id: &str, user_id: &str) -> StoreResult<bool> {
        let removed = sqlx::query(&self.engine.sql("DELETE FROM project_users WHERE project_id = ? AND user_id = ?"))
            .bind(project_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn user_projects(&self, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(&self.engine.sql(
            "SELECT pu.project_id FROM project_users pu JOIN projects p ON p.id = pu.project_id \
             WHERE pu.user_id = ? AND p.archived_at IS NULL ORDER BY pu.project_id",
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn create_service_account(
        &self,
        project_id: &str,
        name: &str,
        now: Timestamp,
    ) -> StoreResult<ServiceAccount> {
        let mut tx = self.begin_write().await?;
        let sa = self.insert_service_account(&mut tx, Some(project_id), name, "member", false, now).await?;
        tx.commit().await?;
        Ok(sa)
    }

    async fn list_service_accounts(&self, project_id: &str, q: &PageQuery) -> StoreResult<Page<ServiceAccount>> {
        let filter = "project_id = ? AND deleted_at IS NULL";
        self.paged(SA_SELECT, "service_accounts", filter, &[project_id], q, service_account_from_row).await
    }

    async fn get_service_account(&self, id: &str) -> StoreResult<Option<ServiceAccount>> {
        self.one(&format!("{SA_SELECT} WHERE id = ? AND deleted_at IS NULL"), id, service_account_from_row).await
    }

    async fn default_service_account(&self, project_id: &str) -> StoreResult<Option<ServiceAccount>> {
        self.one(
            &format!("{SA_SELECT} WHERE project_id = ? AND is_default = 1 AND deleted_at IS NULL"),
            project_id,
            service_account_from_row,
        )
        .await
    }

    async fn organization_service_account(&self) -> StoreResult<Option<ServiceAccount>> {
        let row = sqlx::query(
            &self.engine.sql(format!("{SA_SELECT} WHERE project_id IS NULL AND is_default = 1 AND deleted_at IS NULL")),
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(service_account_from_row).transpose()
    }

    async fn delete_service_account(&self, id: &str, revocation: &Revocation) -> StoreResult<Option<Vec<KeyRecord>>> {
        self.delete_owner("service_accounts", "service_account", id, revocation).await
    }
}

impl SqlStore {
    /// Soft-deletes a key owner (a row of `table`) and revokes its keys in one
    /// transaction; the revoked keys, or `None` when there was no such owner.
    pub(super) async fn delete_owner(
        &self,
        table: &'static str,
        owner_type: &'static str,
        id: &str,
        revocation: &Revocation,
    ) -> StoreResult<Option<Vec<KeyRecord>>> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            &self.engine.sql(format!("UPDATE {table} SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL")),
        )
        .bind(revocation.at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Ok(None);
        }
        let filter = format!("owner_type = '{owner_type}' AND owner_id = ?");
        let ids = self.revoke_where(&mut tx, &filter, id, revocation).await?;
        tx.commit().await?;
        Ok(Some(self.keys_by_ids(&ids).await?))
    }

    pub(super) async fn insert_service_account(
        &self,
        tx: &mut Transaction<'_, Any>,
        project_id: Option<&str>,
        name: &str,
        role: &str,
        is_default: bool,
        now: Timestamp,
    ) -> StoreResult<ServiceAccount> {
        let id = crate::ids::service_account_id();
        sqlx::query(&self.engine.sql(
        "INSERT INTO service_accounts (id, project_id, name, role, is_default, created_at) VALUES (?, ?, ?, ?, ?, ?)",
    ))
    .bind(&id)
    .bind(project_id)
    .bind(name)
    .bind(role)
    .bind(i64::from(is_default))
    .bind(now)
    .execute(&mut **tx)
    .await?;
        Ok(ServiceAccount {
            id,
            project_id: project_id.map(str::to_owned),
            name: name.to_owned(),
            role: role.to_owned(),
            created_at: now,
        })
    }
}
