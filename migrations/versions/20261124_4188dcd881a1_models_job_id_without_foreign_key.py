"""models.job_id is no longer a foreign key, so a finished job can be deleted and its model stays

Revision ID: 4188dcd881a1
Revises: 5e3a7c1b9d24
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4188dcd881a1"
down_revision: str | None = "5e3a7c1b9d24"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_models_job_id_jobs"
# Models named in the downgrade's refusal, at most.
SHOWN = 10


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint(FK_NAME, type_="foreignkey")


def downgrade() -> None:
    # The key cannot come back while a model names a deleted job; deleting those models here
    # would lose them, so the downgrade stops and says which they are.
    orphans = [
        row[0]
        for row in op.get_bind().execute(
            sa.text(
                "SELECT models.id FROM models LEFT JOIN jobs ON jobs.id = models.job_id "
                "WHERE jobs.id IS NULL ORDER BY models.id"
            )
        )
    ]
    if orphans:
        raise RuntimeError(
            f"cannot restore {FK_NAME}: {len(orphans)} model(s) were made by jobs that have been "
            f"deleted ({', '.join(orphans[:SHOWN])}); delete those models first "
            "(DELETE /v1/models/{id}) or stay on this revision"
        )
    with op.batch_alter_table("models") as batch:
        batch.create_foreign_key(FK_NAME, "jobs", ["job_id"], ["id"], ondelete="RESTRICT")
