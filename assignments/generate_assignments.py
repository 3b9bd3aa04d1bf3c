"""Generate the student notebooks of the named assignments with nbgrader.

build_assignments.py runs this in the course folder it builds (the current folder),
as one process for all the assignments, so that nbgrader starts once:

    python generate_assignments.py ASSIGNMENT [ASSIGNMENT ...]
"""

import sys

from nbgrader.converters import GenerateAssignment
from nbgrader.coursedir import CourseDirectory
from traitlets.config.loader import PyFileConfigLoader


def main(*assignments: str) -> int:
    if not assignments:
        print("usage: python generate_assignments.py ASSIGNMENT [ASSIGNMENT ...]",
              file=sys.stderr)
        return 2
    for assignment in assignments:
        config = PyFileConfigLoader("nbgrader_config.py", path=".").load_config()
        config.CourseDirectory.assignment_id = assignment
        app = GenerateAssignment(coursedir=CourseDirectory(config=config),
                                 config=config)
        app.force = True  # rebuild the student notebook from the current source
        app.create_assignment = True  # and enter a new assignment in the gradebook
        app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
