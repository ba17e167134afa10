"""The QM9 reader against an independent parse of qm9pack's CSV (csv + ast, row by row)."""
import csv
import ast

import numpy as np

from nffk.data.qm9 import SYMBOL_TO_Z, data_folder, load_qm9


def test_cached_molecules_match_the_csv_rows():
    molecules = load_qm9()
    assert len(molecules) == 130831 and set(np.unique(molecules.numbers).tolist()) == {1, 6, 7, 8, 9}
    assert molecules.ptr[-1] == molecules.numbers.shape[0] == molecules.positions.shape[0]
    row_of = {int(i): r for r, i in enumerate(molecules.index)}
    checked = 0
    for name in ("qm9_part1.csv", "qm9_part3.csv"):  # the first rows of two files
        with open(data_folder() / name, newline="") as f:
            for k, record in enumerate(csv.DictReader(f)):
                if k == 30:
                    break
                numbers, positions = molecules.get(row_of[int(record["Index"])])
                symbols = ast.literal_eval(record["Elements"])
                assert numbers.tolist() == [SYMBOL_TO_Z[s] for s in symbols]
                np.testing.assert_array_equal(positions, np.array(ast.literal_eval(record["XYZ_Ang"]), dtype=np.float64))
                checked += 1
    assert checked == 60
