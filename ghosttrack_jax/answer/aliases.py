"""Reviewed extra gold aliases for the wikidata set, where its one gold string is clearly too narrow.

BIG-bench qa_wikidata gives one object per fact ("Catholicism", "Persian"). A model that answers
"Roman Catholic" or "Farsi" is right, and containment against the single string would call it a
hallucination. This table was written by reading the set's most frequent gold strings (the country,
language and religion relations cover about 60% of the pool) and adding only names that denote the
same thing. Demonyms stand in for religions ("Muslim" for Islam) because "The religion of X is Muslim"
is how people write it; they do not stand in for countries or languages, whose relations ask for the
name itself. Regions are not countries: "England" is not an alias of "United Kingdom", "Holland" is
accepted for "Netherlands" only because it is the common English name of the country.

Keys and values are compared after labelling.normalize_answer, so case and punctuation do not matter.
"""

from ghosttrack_jax.answer import labelling

EXTRA_ALIASES = {
  # religions
  "Islam": ("Muslim", "Sunni Islam", "Shia Islam"),
  "Catholicism": (
    "Catholic",
    "Roman Catholic",
    "Roman Catholicism",
    "Catholic Church",
    "Catholic Christianity",
  ),
  "Christianity": ("Christian",),
  "Hinduism": ("Hindu",),
  "Buddhism": ("Buddhist",),
  "Judaism": ("Jewish", "Jew"),
  "Sikhism": ("Sikh",),
  "Lutheranism": ("Lutheran",),
  "Anglicanism": ("Anglican", "Church of England"),
  "Eastern Orthodoxy": ("Orthodox", "Eastern Orthodox", "Orthodox Christianity", "Orthodox Church"),
  "Protestantism": ("Protestant",),
  "Shinto": ("Shintoism",),
  "atheism": ("atheist",),
  # languages
  "Persian": ("Farsi",),
  "Chinese": ("Mandarin", "Mandarin Chinese"),
  "Standard Chinese": ("Mandarin", "Mandarin Chinese", "Chinese"),
  "Modern Greek": ("Greek",),
  "Greek": ("Modern Greek",),
  "Standard Arabic": ("Arabic",),
  "Arabic": ("Standard Arabic", "Modern Standard Arabic"),
  "Brazilian Portuguese": ("Portuguese",),
  # countries
  "United States of America": ("United States", "USA", "US", "U.S.", "America"),
  "United States": ("United States of America", "USA", "US", "U.S.", "America"),
  "United Kingdom": ("UK", "U.K.", "Great Britain", "Britain"),
  "Netherlands": ("Holland", "The Netherlands"),
  "People's Republic of China": ("China", "PRC"),
  "Republic of Ireland": ("Ireland",),
  "Czech Republic": ("Czechia",),
  "Soviet Union": ("USSR", "U.S.S.R."),
  "South Korea": ("Republic of Korea",),
  "Russian Empire": ("Russia",),
}

_BY_KEY = {labelling.normalize_answer(k): v for k, v in EXTRA_ALIASES.items()}


def expand(gold: str) -> tuple[str, ...]:
  """The gold string followed by its reviewed aliases (none for most golds)."""
  return (gold,) + tuple(a for a in _BY_KEY.get(labelling.normalize_answer(gold), ()) if a != gold)
