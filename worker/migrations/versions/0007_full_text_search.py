"""Full-text search over article titles and texts (filled in below)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:10:00
"""
from typing import Sequence, Union

from alembic import op

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
