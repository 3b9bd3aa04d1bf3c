"""Autograde one student's submission and write their feedback page.

grade.py runs this in the working copy it makes for each student (the current
folder, an nbgrader course folder), as one process, so that nbgrader starts once:

    python autograde_one.py ASSIGNMENT STUDENT CELL_TIMEOUT
"""

import sys

from nbgrader.converters import Autograde, GenerateFeedback
from nbgrader.coursedir import CourseDirectory
from traitlets.config.loader import PyFileConfigLoader


def main(assignment: str, student: str, cell_timeout: str) -> int:
    config = PyFileConfigLoader("nbgrader_config.py", path=".").load_config()
    config.Execute.timeout = int(cell_timeout)
    config.CourseDirectory.assignment_id = assignment
    config.CourseDirectory.student_id = student
    coursedir = CourseDirectory(config=config)
    Autograde(coursedir=coursedir, config=config).start()
    GenerateFeedback(coursedir=coursedir, config=config).start()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
