"""Analytics: agreement between clinicians, annotator quality, the Bradley–Terry leaderboard of
candidate models, reward model vs clinicians, and shareable reports (HTML + Markdown + PNG).

Every function here is pure over plain records (:class:`analytics.records.JudgmentRecord`) or takes
``session=``; nothing imports streamlit or typer. See ``docs/analytics.md`` for the methods.
"""

from analytics.config import AnalyticsConfig
from analytics.errors import AnalyticsError

__all__ = ["AnalyticsConfig", "AnalyticsError"]
