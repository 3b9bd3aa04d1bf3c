# nbgrader's settings for the course's assignments: build_assignments.py copies this
# file into the course folder it builds (build/assignments/course/), and grade.py into
# the working copy in which it grades each submission.
c = get_config()  # noqa: F821 (nbgrader provides get_config)

c.CourseDirectory.root = "."
# The student notebooks are built from assignments/*.toml, not from a roster.
c.CourseDirectory.db_assignments = []
c.CourseDirectory.db_students = []
# Seconds one cell may run when grading before it is interrupted; the cells after it
# still run, so a submission that hangs in one answer keeps the marks of the others.
# grade.py --cell-timeout overrides it.
c.Execute.timeout = 60
# What replaces each solution in a student notebook (nbgrader's default, said here).
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
