# nbgrader configuration of the pplab course folder (read by nbgrader 0.9.x
# when it runs with this folder as its working directory).
import os

from nbgrader.exchange import abc as exchange_abc

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file

COURSE_ROOT = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.course_id = "pplab"
c.CourseDirectory.root = COURSE_ROOT
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"

# No exchange: notebooks reach learners and come back by other means (a
# shared volume, ngshare, a learning-management system), and submissions are
# placed under submitted/<student>/pipeline_exercises/. Every exchange command
# (release_assignment, fetch_assignment, submit, collect, list and the
# feedback ones) fails with this message instead of writing to an exchange
# folder, and formgrader reports the exchange as missing.
EXCHANGE_OFF = ("this course does not use nbgrader's exchange: hand out release/ yourself and put "
                "submissions under submitted/<student>/ (see docs/nbgrader.md in pplab)")


def _without_exchange(base):
    def init_src(self):
        self.fail(EXCHANGE_OFF)

    return type("Disabled" + base.__name__, (base,), {"init_src": init_src})


for _trait, _base in (("fetch_assignment", exchange_abc.ExchangeFetchAssignment),
                      ("fetch_feedback", exchange_abc.ExchangeFetchFeedback),
                      ("release_assignment", exchange_abc.ExchangeReleaseAssignment),
                      ("release_feedback", exchange_abc.ExchangeReleaseFeedback),
                      ("list", exchange_abc.ExchangeList),
                      ("submit", exchange_abc.ExchangeSubmit),
                      ("collect", exchange_abc.ExchangeCollect)):
    setattr(c.ExchangeFactory, _trait, _without_exchange(_base))

# The kernel that runs the notebooks during autograde. Its kernelspec starts
# "python", which jupyter_client replaces with the interpreter that runs
# nbgrader: run nbgrader from the environment where pplab is installed.
c.Execute.kernel_name = "python3"
# Seconds per cell. The first test cell imports pplab's checks and torch,
# which takes a few seconds on a loaded machine.
c.Execute.timeout = 120
