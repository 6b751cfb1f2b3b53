"""Initial schema of this broker, at the contract's head revision.

The contract's head is `u1p2q3r4s5t6_user_pubkey`; this broker reaches it in one revision that
creates every table of contract section 5 plus the append-only triggers on the audit tables.
Later revisions must spell their changes out (this one reads the models as they are at head).

Revision ID: u1p2q3r4s5t6_user_pubkey
Revises:
"""
from alembic import op

from app.models import APPEND_ONLY_TABLES, metadata

revision = "u1p2q3r4s5t6_user_pubkey"
down_revision = None
branch_labels = None
depends_on = None

NO_MUTATE_FN = """
CREATE FUNCTION audit_log_no_mutate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (CRIT-3 Court): % is not permitted', TG_OP;
END;
$$ LANGUAGE plpgsql
"""


def _trigger_name(table: str) -> str:
    return "audit_log_no_update_or_delete" if table == "audit_log" else f"{table}_no_update_or_delete"


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind)
    op.execute(NO_MUTATE_FN)
    for table in APPEND_ONLY_TABLES:
        op.execute(f"CREATE TRIGGER {_trigger_name(table)} BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION audit_log_no_mutate()")


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {_trigger_name(table)} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS audit_log_no_mutate()")
    metadata.drop_all(op.get_bind())
