"""The course experiment fastopt grew from, kept apart from the library.

The two-moons classifier of the Deep Learning Specialization (course 2,
week 2) that ``python -m fastopt demo`` trains with GD, momentum, RMSProp and
Adam:

- ``fastopt.course.datasets``: scikit-learn's ``make_moons`` construction and
  the course's 300-point ``course_moons`` set.
- ``fastopt.course.data``: mini-batches with the course's seeding and the
  random-source check they share.
- ``fastopt.course.models``: the course's fully connected ReLU/sigmoid
  network (``MLP``) and its He initialisation.
- ``fastopt.course.demo``: the experiment itself, behind
  ``python -m fastopt demo``.

None of it is needed to use the optimizers.
"""
