"""Table CSVs carry the numbers as the tables show them (issue 24): no float32 noise such
as 28.999999 where 29.0 is meant, p-values whole."""
import numpy as np
import pandas as pd

from advss.tables import aggregate, write_table


def test_csv_is_rounded_as_the_table_shows_it(tmp_path):
    # float32 means of 0.29 and 0.43 as percentages: 28.999999165..., 43.000001311...
    ra = 100 * np.float32([0.29, 0.43]).astype(float)
    assert ra[0] != 29.0 and ra[1] != 43.0
    df = pd.DataFrame({"scenario": ["(P3,F4)", "(P1,F4)"], "seed": [0, 0], "ra": ra,
                       "pretrain_hours": [1 / 3, 2 / 3], "p_value": [2 * 0.5**40, 1 / 3]})
    agg = aggregate(df, ["scenario"], ["ra", "pretrain_hours"])
    agg["p_value"] = df["p_value"]
    write_table(pd.DataFrame({"Scenario": agg["scenario"]}), agg, tmp_path / "t", "caption", "cafe")
    text = (tmp_path / "t.csv").read_text()
    assert "28.99999" not in text and "43.00000" not in text
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv["ra"]) == [29.0, 43.0]
    assert list(csv["pretrain_hours"]) == [0.333, 0.667]  # the table shows hours with three decimals
    assert csv["p_value"][0] == 2 * 0.5**40  # p-values keep every digit
    assert list(csv["n_seeds"]) == [1, 1] and csv["ra_std"].isna().all()
